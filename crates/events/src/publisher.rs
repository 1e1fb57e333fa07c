//! Group commit for publishing: concurrent publish requests are gathered by one committer task
//! and written together, one transaction per tenant with multi-row inserts, so N concurrent
//! publishes cost one commit instead of N. Requests wait no longer than it takes the batch in
//! flight to commit; nothing waits on a timer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use runway_core::{ApiError, EventPos, TenantId};
use runway_store::{DbScope, Store, StoreError, Tx, on_conn};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::dispatch::Dispatch;
use crate::endpoints::Subscriber;
use crate::log::Published;
use crate::worker::Claimed;

/// An event validated and ready to store.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// Assigned again by the committer, so positions follow commit order (see `write_group`).
    pub pos: EventPos,
    pub event_id: String,
    /// Whether the publisher chose the id; otherwise the id is the position.
    pub explicit_id: bool,
    pub event_type: String,
    pub version: String,
    pub payload: String,
    pub key: Option<String>,
    pub occurred_at: i64,
}

/// One publish request waiting for its commit.
struct Job {
    tenant: TenantId,
    rows: Vec<Prepared>,
    now: i64,
    reply: oneshot::Sender<Result<Vec<Published>, ApiError>>,
}

/// The most events written in one transaction.
const MAX_GROUP_EVENTS: usize = 2_000;
/// Rows per multi-row statement: 9 parameters an event or a delivery, well under either
/// engine's limit on bound parameters.
const ROWS_PER_STATEMENT: usize = 500;

/// The sending side; the committer stops when it is dropped.
pub(crate) struct Publisher {
    jobs: mpsc::Sender<Job>,
}

impl Publisher {
    /// Starts the committer on the current runtime. `lease_micros` is how long a delivery handed
    /// straight to the worker stays leased to it.
    pub(crate) fn start(store: Store, wake: Arc<Notify>, dispatch: Arc<Dispatch>, lease_micros: i64) -> Publisher {
        let (jobs, rx) = mpsc::channel(4096);
        let committer = Committer { store, wake, dispatch, lease_micros };
        tokio::spawn(committer.run(rx));
        Publisher { jobs }
    }

    /// Stores `rows` for `tenant` with whatever else is being published at the same moment.
    pub(crate) async fn publish(
        &self,
        tenant: &TenantId,
        rows: Vec<Prepared>,
        now: i64,
    ) -> Result<Vec<Published>, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { tenant: tenant.clone(), rows, now, reply })
            .await
            .map_err(|_| ApiError::new(runway_core::ErrorCode::Unavailable, "shutting down"))?;
        answer.await.map_err(|_| ApiError::internal("the publish committer stopped"))?
    }
}

/// The one task that writes publishes.
struct Committer {
    store: Store,
    /// Wakes the worker for deliveries left in the queue.
    wake: Arc<Notify>,
    dispatch: Arc<Dispatch>,
    lease_micros: i64,
}

impl Committer {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.recv().await {
            let mut count = first.rows.len();
            let mut jobs = vec![first];
            while count < MAX_GROUP_EVENTS {
                match rx.try_recv() {
                    Ok(job) => {
                        count += job.rows.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            // One transaction per tenant keeps row-level security meaningful for these writes.
            let mut by_tenant: Vec<(TenantId, Vec<Job>)> = Vec::new();
            for job in jobs {
                match by_tenant.iter_mut().find(|(t, _)| *t == job.tenant) {
                    Some((_, group)) => group.push(job),
                    None => by_tenant.push((job.tenant.clone(), vec![job])),
                }
            }
            let mut created = 0usize;
            let mut queued = 0usize;
            for (tenant, mut group) in by_tenant {
                let result = self.write_group(&tenant, &mut group).await;
                match result {
                    Ok((answers, left_in_queue)) => {
                        queued += left_in_queue;
                        for (job, answer) in group.into_iter().zip(answers) {
                            created += answer.iter().filter(|p| !p.duplicate).count();
                            let _ = job.reply.send(Ok(answer));
                        }
                    }
                    Err(e) => {
                        let e = ApiError::from(e);
                        for job in group {
                            let _ = job.reply.send(Err(e.clone()));
                        }
                    }
                }
            }
            metrics::counter!("runway_events_published_total").increment(created as u64);
            metrics::histogram!("runway_publish_group_events").record(count as f64);
            if queued > 0 {
                self.wake.notify_one();
            }
        }
    }

    /// Writes every job of one tenant in one transaction; answers in job order, with how many
    /// deliveries were left in the queue for the worker to claim.
    async fn write_group(
        &self,
        tenant: &TenantId,
        jobs: &mut [Job],
    ) -> Result<(Vec<Vec<Published>>, usize), StoreError> {
        let mut tx = self.store.write(DbScope::Tenant(tenant.clone())).await?;
        // Positions are made here, by the one committer, in the order groups commit: a reader paging
        // the log by position never finds a smaller one committed after a larger one it has seen.
        for r in jobs.iter_mut().flat_map(|j| j.rows.iter_mut()) {
            r.pos = EventPos::generate();
            if !r.explicit_id {
                r.event_id = r.pos.to_string();
            }
        }
        let endpoints = crate::endpoints::subscribers(&mut tx, tenant).await?;
        let filters: Vec<Vec<String>> = endpoints.iter().map(Subscriber::types).collect::<Result<_, _>>()?;
        let rows: Vec<(&Prepared, i64)> = jobs.iter().flat_map(|j| j.rows.iter().map(move |r| (r, j.now))).collect();
        let mut inserted: HashSet<String> = HashSet::with_capacity(rows.len());
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            inserted.extend(insert_events(&mut tx, tenant, chunk).await?);
        }
        // Events whose id was published before (or earlier in this group) keep their first position.
        let repeated: Vec<&str> =
            rows.iter().filter(|(r, _)| !inserted.contains(r.pos.as_str())).map(|(r, _)| r.event_id.as_str()).collect();
        let originals =
            if repeated.is_empty() { HashMap::new() } else { original_positions(&mut tx, tenant, &repeated).await? };
        let mut deliveries: Vec<GroupDelivery> = rows
            .iter()
            .filter(|(r, _)| inserted.contains(r.pos.as_str()))
            .flat_map(|(r, now)| {
                endpoints.iter().zip(&filters).filter(|(_, f)| f.is_empty() || f.contains(&r.event_type)).map(
                    move |(e, _)| GroupDelivery {
                        id: runway_core::DeliveryId::generate().as_str().to_owned(),
                        event: r,
                        endpoint: e,
                        now: *now,
                        ordering_key: r.key.as_deref().filter(|_| e.ordered),
                        lease_until: None,
                    },
                )
            })
            .collect();
        // Deliveries that must wait their turn behind a key stay in the queue; the rest may go
        // straight to this replica's worker while the scheduler has room for them (a fair
        // share: see `fair::Scheduler::admits`).
        let plan = self.dispatch.plan_of(&mut tx, tenant.as_str()).await?;
        let shares: Vec<(usize, crate::fair::Share)> = deliveries
            .iter()
            .enumerate()
            .filter(|(_, d)| d.ordering_key.is_none())
            .map(|(i, d)| {
                let e = d.endpoint;
                let share =
                    self.dispatch.share(&plan, &e.id, e.max_in_flight, e.rate_limit, e.degraded_since.is_some());
                (i, share)
            })
            .collect();
        let reserved = self.dispatch.reserve(
            shares.iter().map(|(i, share)| (tenant.as_str(), deliveries[*i].endpoint.id.as_str(), share.clone())),
        );
        for ((i, _), _) in shares.iter().zip(&reserved).filter(|(_, r)| **r) {
            let d = &mut deliveries[*i];
            d.lease_until = Some(d.now + self.lease_micros);
        }
        let reserved = reserved.iter().filter(|r| **r).count();
        let written = async {
            for chunk in deliveries.chunks(ROWS_PER_STATEMENT) {
                insert_deliveries(&mut tx, tenant, chunk, &self.dispatch.token).await?;
            }
            tx.commit().await
        }
        .await;
        if let Err(e) = written {
            for d in deliveries.iter().filter(|d| d.lease_until.is_some()) {
                self.dispatch.unreserve(tenant.as_str(), &d.endpoint.id);
            }
            return Err(e);
        }
        metrics::counter!("runway_webhook_deliveries_direct_total").increment(reserved as u64);
        let mut returned = Vec::new();
        for d in deliveries.iter().filter(|d| d.lease_until.is_some()) {
            if let Some(back) = self.dispatch.fill(d.claimed(tenant, &plan, &self.dispatch.token)) {
                returned.push(back);
            }
        }
        if !returned.is_empty() {
            // The worker stopped between the reservation and the commit: the leases go back.
            if let Err(e) = crate::worker::release_leases(&self.store, &returned).await {
                tracing::warn!(error = %e, "could not give back leases; those deliveries wait for them to run out");
            }
        }
        let leased = reserved - returned.len();
        let answers = jobs
            .iter()
            .map(|j| {
                j.rows
                    .iter()
                    .map(|r| {
                        if inserted.contains(r.pos.as_str()) {
                            Published { id: r.event_id.clone(), pos: r.pos.to_string(), duplicate: false }
                        } else {
                            let pos = originals.get(&r.event_id).cloned().unwrap_or_default();
                            Published { id: r.event_id.clone(), pos, duplicate: true }
                        }
                    })
                    .collect()
            })
            .collect();
        Ok((answers, deliveries.len() - leased))
    }
}

/// One delivery row about to be written.
struct GroupDelivery<'a> {
    id: String,
    event: &'a Prepared,
    endpoint: &'a Subscriber,
    now: i64,
    ordering_key: Option<&'a str>,
    /// Set when the delivery is handed straight to this replica's worker.
    lease_until: Option<i64>,
}

impl GroupDelivery<'_> {
    /// What the worker would have claimed from the store for this delivery.
    fn claimed(&self, tenant: &TenantId, plan: &str, lease_token: &str) -> Claimed {
        let (e, r) = (self.endpoint, self.event);
        Claimed {
            id: self.id.clone(),
            tenant_id: tenant.as_str().to_owned(),
            endpoint_id: e.id.clone(),
            attempts: 0,
            rate_limit: e.rate_limit,
            url: e.url.clone(),
            headers: e.headers.clone(),
            secret: e.secret.clone(),
            previous_secret: e.previous_secret.clone(),
            previous_secret_expires_at: e.previous_secret_expires_at,
            event_id: r.event_id.clone(),
            event_type: r.event_type.clone(),
            payload: r.payload.clone(),
            occurred_at: r.occurred_at,
            lease_token: Some(lease_token.to_owned()),
            lease_until: self.lease_until,
            plan: plan.to_owned(),
            max_in_flight: e.max_in_flight,
            degraded_since: e.degraded_since,
            ordering_key: self.ordering_key.map(str::to_owned),
        }
    }
}

fn placeholders(rows: usize, per_row: usize) -> String {
    let mut sql = String::with_capacity(rows * per_row * 6);
    let mut n = 1;
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for j in 0..per_row {
            if j > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&n.to_string());
            n += 1;
        }
        sql.push(')');
    }
    sql
}

/// Inserts events; returns the positions of those that were new.
async fn insert_events(tx: &mut Tx, tenant: &TenantId, rows: &[(&Prepared, i64)]) -> Result<Vec<String>, StoreError> {
    let sql = format!(
        "INSERT INTO events (pos, tenant_id, event_id, type, type_version, payload, event_key, occurred_at, received_at)
         VALUES {} ON CONFLICT (tenant_id, event_id) DO NOTHING RETURNING pos",
        placeholders(rows.len(), 9)
    );
    let positions: Vec<String> = on_conn!(tx, c => {
        let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()));
        for (r, now) in rows {
            q = q.bind(r.pos.as_str()).bind(tenant.as_str()).bind(&r.event_id).bind(&r.event_type).bind(&r.version)
                .bind(&r.payload).bind(&r.key).bind(r.occurred_at).bind(*now);
        }
        q.fetch_all(&mut *c).await
    })?;
    Ok(positions)
}

async fn original_positions(
    tx: &mut Tx,
    tenant: &TenantId,
    ids: &[&str],
) -> Result<HashMap<String, String>, StoreError> {
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let sql =
            format!("SELECT event_id, pos FROM events WHERE tenant_id = $1 AND event_id IN ({})", list.join(", "));
        let rows: Vec<(String, String)> = on_conn!(tx, c => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(tenant.as_str());
            for id in chunk {
                q = q.bind(*id);
            }
            q.fetch_all(&mut *c).await
        })?;
        out.extend(rows);
    }
    Ok(out)
}

async fn insert_deliveries(
    tx: &mut Tx,
    tenant: &TenantId,
    rows: &[GroupDelivery<'_>],
    lease_token: &str,
) -> Result<(), StoreError> {
    // Each row: ($id, $tenant, $endpoint, $pos, 'pending', 0, $now, $now, $now, $replay, $key, $lease_until, $token).
    let mut values = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let b = i * 9;
        values.push(format!(
            "(${}, ${}, ${}, ${}, 'pending', 0, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5,
            b + 5,
            b + 5,
            b + 6,
            b + 7,
            b + 8,
            b + 9
        ));
    }
    let sql = format!(
        "INSERT INTO deliveries (id, tenant_id, endpoint_id, event_pos, status, attempts, next_attempt_at, created_at, updated_at, replay, ordering_key, lease_until, lease_token)
         VALUES {}",
        values.join(", ")
    );
    on_conn!(tx, c => {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for d in rows {
            q = q.bind(d.id.as_str()).bind(tenant.as_str()).bind(d.endpoint.id.as_str()).bind(d.event.pos.as_str())
                .bind(d.now).bind(false).bind(d.ordering_key).bind(d.lease_until)
                .bind(d.lease_until.map(|_| lease_token));
        }
        q.execute(&mut *c).await.map(|_| ())
    })?;
    Ok(())
}
