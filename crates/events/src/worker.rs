//! The delivery worker: claims due deliveries from the store under a lease, signs and sends
//! them, records every attempt, and schedules the retry or dead-letters the message.
//!
//! The queue is the `deliveries` table behind [`DeliveryQueue`], narrow enough that another
//! backend (NATS JetStream) can replace it without touching the sending logic.

use crate::Events;
use crate::dispatch::ClaimRoom;
use crate::fair::{Picked, Share, TenantRooms};
use crate::schedule::{FailureHint, random_unit};
use crate::signature::SigningKey;
use crate::ssrf::{self, Cidr};
use runway_core::AttemptId;
use runway_core::clock::rfc3339;
use runway_core::config::EventsConfig;
use runway_store::{DbScope, Engine, StoreError, on_conn};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A refused destination; found in a reqwest error's source chain to classify the attempt.
#[derive(Debug, thiserror::Error)]
#[error("blocked destination: {0}")]
pub struct BlockedDestination(pub String);

/// A name that did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("DNS lookup failed: {0}")]
struct DnsFailure(String);

/// Resolves webhook hosts and drops every address the SSRF rules refuse, so the connection can
/// only go where the check allowed (no rebinding between check and connect).
struct GuardedResolver {
    allow: Arc<Vec<Cidr>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| Box::new(DnsFailure(format!("{host}: {e}"))) as Box<dyn std::error::Error + Send + Sync>)?
                .collect();
            let mut refused = None;
            let ok: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match ssrf::check(a.ip(), &allow) {
                    Ok(()) => true,
                    Err(why) => {
                        refused = Some(why);
                        false
                    }
                })
                .collect();
            if ok.is_empty() {
                let why = refused.unwrap_or_else(|| format!("{host} has no addresses"));
                return Err(Box::new(BlockedDestination(why)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client for deliveries: no redirects, the configured timeout, guarded DNS.
pub fn client(cfg: &EventsConfig, allow: Arc<Vec<Cidr>>) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(cfg.delivery_timeout_secs))
        .connect_timeout(Duration::from_secs(cfg.delivery_timeout_secs.min(10)))
        .user_agent(concat!("Runway-Webhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(GuardedResolver { allow }))
        .build()
}

/// A delivery taken off the queue, with everything needed to send it.
#[derive(Debug, sqlx::FromRow)]
pub struct Claimed {
    pub id: String,
    pub tenant_id: String,
    pub endpoint_id: String,
    pub attempts: i64,
    pub rate_limit: Option<i64>,
    pub url: String,
    pub headers: String,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<i64>,
    pub event_id: String,
    pub event_type: String,
    pub payload: String,
    pub occurred_at: i64,
    /// The lease this worker holds, so a delivery that waited for a slot can renew it first.
    pub lease_token: Option<String>,
    pub lease_until: Option<i64>,
    /// The tenant's plan: its weight, pace and endpoint cap (filled from identity after the read).
    #[sqlx(default)]
    pub plan: String,
    /// The endpoint's own cap on sends in flight.
    pub max_in_flight: Option<i64>,
    /// Set when a worker found the endpoint degraded (seeds this replica's judgement).
    pub degraded_since: Option<i64>,
    /// The event's key on an `ordered` endpoint: the key's next delivery becomes claimable
    /// once this one is done.
    pub ordering_key: Option<String>,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status_code: Option<u16>,
    pub latency: Duration,
    pub error_kind: Option<&'static str>,
    pub excerpt: Option<String>,
    pub retry_after: Option<Duration>,
}

impl Outcome {
    fn succeeded(&self) -> bool {
        self.error_kind.is_none()
    }
}

/// The queue the worker drains. The store implements it; the sending logic only sees this.
pub trait DeliveryQueue: Send + Sync {
    /// Leases up to `limit` due deliveries for `lease`, fairly: tenants holding least first and
    /// none beyond its room (`tenants`), round robin over tenants, and within a tenant over its
    /// endpoints, at most `per_endpoint` from each endpoint and none from the endpoints in
    /// `skip` (their share is held already).
    fn claim(
        &self,
        limit: u32,
        per_endpoint: u32,
        skip: &[String],
        tenants: &TenantRooms,
        lease: Duration,
    ) -> impl std::future::Future<Output = Result<Vec<Claimed>, StoreError>> + Send;
    /// Records attempts and moves each delivery on (delivered, due again, or dead), in one
    /// transaction for the whole batch.
    fn complete(&self, done: &[Finished]) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
}

/// The claim's fair choice: for each enabled endpoint its oldest due deliveries (an index probe
/// per endpoint, so one endpoint's backlog is never scanned to find another's), ranked round
/// robin across tenants and, within a tenant, across its endpoints. A row's rank is what its
/// tenant would hold with it (`h` says what each tenant holds already and how many more it may
/// take; `$6` is what a tenant holding nothing may take), so the claim fills tenants up from
/// the least held, like water: a newcomer's first delivery goes before the sixth of a tenant
/// holding five, however old those are, and no tenant takes more than its room. `{due}` is the
/// engine's per-endpoint lookup, `{held}` the tenants' list.
const FAIR_DUE: &str = "SELECT f.id FROM (
      SELECT c.id, c.tenant_id, c.next_attempt_at,
             ROW_NUMBER() OVER (PARTITION BY c.tenant_id ORDER BY c.nth, c.next_attempt_at, c.id) AS nth_tenant
      FROM ({due}) c
    ) f LEFT JOIN ({held}) h ON h.column1 = f.tenant_id
    WHERE f.nth_tenant <= COALESCE(h.column3, $6)
    ORDER BY f.nth_tenant + COALESCE(h.column2, 0), f.next_attempt_at LIMIT $4";

/// Due and claimable: not leased (or the lease ran out), and for an ordered key, the first pending.
const CLAIMABLE: &str =
    "d.status = 'pending' AND d.next_attempt_at <= $3 AND (d.lease_until IS NULL OR d.lease_until < $3)
      AND (d.ordering_key IS NULL OR NOT EXISTS (
        SELECT 1 FROM deliveries o WHERE o.endpoint_id = d.endpoint_id AND o.ordering_key = d.ordering_key
          AND o.status = 'pending' AND o.event_pos < d.event_pos))";

impl DeliveryQueue for Events {
    async fn claim(
        &self,
        limit: u32,
        per_endpoint: u32,
        skip: &[String],
        tenants: &TenantRooms,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let now = self.clock.now_micros();
        let token = runway_core::id::base32_encode(&runway_core::secret::random_bytes::<12>());
        let until = now + lease.as_micros() as i64;
        let mut tx = self.store.write(DbScope::Platform).await?;
        let skip_sql = if skip.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = (0..skip.len()).map(|i| format!("${}", i + 7)).collect();
            format!(" AND w.id NOT IN ({})", list.join(", "))
        };
        // What each tenant holds and may take, as a VALUES list (its columns are `column1`,
        // `column2`, `column3` on both engines), numbered after the skip list; with no tenant
        // holding anything, an empty list of the same shape.
        let held_sql = if tenants.held.is_empty() {
            "SELECT '' AS column1, 0 AS column2, 0 AS column3 WHERE 1 = 0".to_owned()
        } else {
            let first = 7 + skip.len();
            let rows: Vec<String> = (0..tenants.held.len())
                .map(|i| format!("(${}, ${}, ${})", first + 3 * i, first + 3 * i + 1, first + 3 * i + 2))
                .collect();
            format!("VALUES {}", rows.join(", "))
        };
        let due = match tx.engine() {
            // PostgreSQL: a lateral top-k per endpoint; the rows are locked in the outer query
            // (window functions and FOR UPDATE do not mix), skipping those another replica holds.
            Engine::Postgres => format!(
                "SELECT d.tenant_id, d.id, d.next_attempt_at, d.nth FROM webhook_endpoints w CROSS JOIN LATERAL (
                   SELECT d.tenant_id, d.id, d.next_attempt_at, ROW_NUMBER() OVER (ORDER BY d.next_attempt_at, d.id) AS nth
                   FROM deliveries d WHERE d.endpoint_id = w.id AND {CLAIMABLE}
                   ORDER BY d.next_attempt_at, d.id LIMIT $5) d
                 WHERE w.enabled{skip_sql}"
            ),
            // SQLite: the same top-k as a correlated list per endpoint, looked up by id.
            Engine::Sqlite => format!(
                "SELECT d.tenant_id, d.id, d.next_attempt_at,
                        ROW_NUMBER() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at, d.id) AS nth
                 FROM webhook_endpoints w JOIN deliveries d ON d.id IN (
                   SELECT d.id FROM deliveries d WHERE d.endpoint_id = w.id AND {CLAIMABLE}
                   ORDER BY d.next_attempt_at, d.id LIMIT $5)
                 WHERE w.enabled{skip_sql}"
            ),
        };
        let fair = FAIR_DUE.replace("{due}", &due).replace("{held}", &held_sql);
        let sql = match tx.engine() {
            // The claimability is checked again at the locking level: a row another replica
            // claimed and committed after the list was made is re-read there, and must not pass.
            Engine::Postgres => format!(
                "UPDATE deliveries SET lease_until = $1, lease_token = $2 WHERE id IN (
                   SELECT d.id FROM deliveries d WHERE d.id IN ({fair})
                     AND d.status = 'pending' AND (d.lease_until IS NULL OR d.lease_until < $3)
                   FOR UPDATE SKIP LOCKED) RETURNING id"
            ),
            Engine::Sqlite => {
                format!("UPDATE deliveries SET lease_until = $1, lease_token = $2 WHERE id IN ({fair}) RETURNING id")
            }
        };
        let ids: Vec<String> = on_conn!(&mut tx, c => {
            let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(until).bind(&token).bind(now).bind(i64::from(limit)).bind(i64::from(per_endpoint.max(1)))
                .bind(tenants.newcomer as i64);
            for e in skip {
                q = q.bind(e);
            }
            for t in &tenants.held {
                q = q.bind(&t.tenant).bind(t.held as i64).bind(t.room as i64);
            }
            q.fetch_all(&mut *c).await
        })?;
        metrics::counter!("runway_webhook_claims_total").increment(1);
        metrics::counter!("runway_webhook_claimed_total").increment(ids.len() as u64);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let read = format!(
            "SELECT d.id, d.tenant_id, d.endpoint_id, d.attempts, w.rate_limit, w.url, w.headers, w.secret, w.previous_secret, w.previous_secret_expires_at, e.event_id, e.type AS event_type, e.payload, e.occurred_at, d.lease_token, d.lease_until,
                    w.max_in_flight, w.degraded_since, d.ordering_key
             FROM deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id JOIN events e ON e.pos = d.event_pos
             WHERE d.id IN ({}) ORDER BY d.next_attempt_at",
            list.join(", ")
        );
        let mut claimed: Vec<Claimed> = on_conn!(&mut tx, c => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(read.as_str()));
            for id in &ids {
                q = q.bind(id);
            }
            q.fetch_all(&mut *c).await
        })?;
        for d in &mut claimed {
            d.plan = self.dispatch.plan_of(&mut tx, &d.tenant_id).await?;
        }
        // One limit served every endpoint in the query; an endpoint with a smaller cap keeps
        // only what fits its held share, and the rest go back in the same transaction.
        let mut room: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        let mut excess = Vec::new();
        claimed.retain(|d| {
            let left = room.entry(d.endpoint_id.clone()).or_insert_with(|| {
                let share = self.dispatch.share_of(d);
                self.dispatch.endpoint_room(&d.tenant_id, &d.endpoint_id, share.endpoint_cap)
            });
            if *left == 0 {
                excess.push(d.id.clone());
                return false;
            }
            *left -= 1;
            true
        });
        for chunk in excess.chunks(500) {
            let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "UPDATE deliveries SET lease_until = NULL, lease_token = NULL WHERE lease_token = $1 AND id IN ({})",
                list.join(", ")
            );
            on_conn!(&mut tx, c => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(&token);
                for id in chunk {
                    q = q.bind(id);
                }
                q.execute(&mut *c).await.map(|_| ())
            })?;
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn complete(&self, done: &[Finished]) -> Result<(), StoreError> {
        let now = self.clock.now_micros();
        let mut tx = self.store.write(DbScope::Platform).await?;
        let mut healthy: Vec<&str> = Vec::new();
        let mut delivered: Vec<&str> = Vec::new();
        for chunk in done.chunks(500) {
            insert_attempts(&mut tx, chunk, now).await?;
        }
        for (d, o, retry_at) in done {
            let status = match (o.succeeded(), retry_at) {
                (true, _) => "delivered",
                (false, Some(_)) => "pending",
                (false, None) => "dead",
            };
            if o.succeeded() {
                // Successes share every new value, so they move in one statement below.
                delivered.push(&d.id);
                if !healthy.contains(&d.endpoint_id.as_str()) {
                    healthy.push(&d.endpoint_id);
                }
            } else {
                let last_error = o.error_kind.map(|k| match o.status_code {
                    Some(s) => format!("{k}: HTTP {s}"),
                    None => k.to_owned(),
                });
                on_conn!(&mut tx, c => sqlx::query(
                    "UPDATE deliveries SET status = $1, attempts = attempts + 1, next_attempt_at = $2, lease_until = NULL, lease_token = NULL,
                     last_error = $3, updated_at = $4 WHERE id = $5")
                    .bind(status).bind(retry_at.unwrap_or(now)).bind(&last_error).bind(now).bind(&d.id)
                    .execute(&mut *c).await.map(|_| ()))?;
            }
            metrics::counter!("runway_webhook_deliveries_total", "outcome" => status).increment(1);
            // Per endpoint, so its success ratio is rate(success) / rate(all) in PromQL; bounded, so
            // a tenant creating endpoints cannot grow the series without limit.
            let result = if o.succeeded() { "success" } else { "failure" };
            let endpoint = ENDPOINT_LABELS.label(&d.endpoint_id);
            metrics::counter!("runway_webhook_endpoint_attempts_total", "endpoint" => endpoint, "result" => result)
                .increment(1);
            metrics::histogram!("runway_webhook_attempt_duration_seconds").record(o.latency.as_secs_f64());
        }
        for chunk in delivered.chunks(500) {
            let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1, next_attempt_at = $1, lease_until = NULL,
                 lease_token = NULL, last_error = NULL, updated_at = $1 WHERE id IN ({})",
                list.join(", ")
            );
            on_conn!(&mut tx, c => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(now);
                for id in chunk {
                    q = q.bind(*id);
                }
                q.execute(&mut *c).await.map(|_| ())
            })?;
        }
        // Two recorders may run at once: lock endpoint rows in one order, so they never deadlock.
        healthy.sort_unstable();
        for ep in healthy {
            on_conn!(&mut tx, c => sqlx::query("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL")
                .bind(ep).execute(&mut *c).await.map(|_| ()))?;
        }
        tx.commit().await
    }
}

/// Records attempts with one multi-row insert.
async fn insert_attempts(tx: &mut runway_store::Tx, done: &[Finished], now: i64) -> Result<(), StoreError> {
    let values: Vec<String> = (0..done.len())
        .map(|i| {
            let b = i * 8;
            format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                done.len() * 8 + 1,
                b + 5,
                b + 6,
                b + 7,
                b + 8
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO delivery_attempts (id, delivery_id, tenant_id, endpoint_id, at, status_code, latency_ms, error_kind, response_excerpt) VALUES {}",
        values.join(", ")
    );
    on_conn!(tx, c => {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for (d, o, _) in done {
            q = q.bind(AttemptId::generate().as_str().to_owned()).bind(&d.id).bind(&d.tenant_id).bind(&d.endpoint_id)
                .bind(o.status_code.map(i64::from)).bind(o.latency.as_millis() as i64).bind(o.error_kind).bind(&o.excerpt);
        }
        q.bind(now).execute(&mut *c).await.map(|_| ())
    })?;
    Ok(())
}

/// A finished attempt on its way to the store: the delivery, how it went, when to retry.
pub type Finished = (Claimed, Outcome, Option<i64>);

const EXCERPT_BYTES: usize = 4096;

fn classify(e: &reqwest::Error) -> &'static str {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.downcast_ref::<BlockedDestination>().is_some() {
            return "blocked_destination";
        }
        if s.downcast_ref::<DnsFailure>().is_some() {
            return "dns";
        }
        src = s.source();
    }
    if e.is_timeout() {
        return "timeout";
    }
    let text = format!("{e:?}").to_ascii_lowercase();
    if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
        return "tls";
    }
    "connect"
}

/// How many endpoints get their own `runway_webhook_endpoint_attempts_total` series per process;
/// the rest are counted as `endpoint="other"`.
pub const MAX_ENDPOINT_LABELS: usize = 200;

static ENDPOINT_LABELS: std::sync::LazyLock<runway_core::labels::BoundedLabels> =
    std::sync::LazyLock::new(|| runway_core::labels::BoundedLabels::new(MAX_ENDPOINT_LABELS));

/// The body receivers get: the Standard Webhooks envelope.
pub fn envelope(d: &Claimed) -> Result<Vec<u8>, StoreError> {
    let data: serde_json::Value = runway_store::stored_json("event payload", &d.payload)?;
    Ok(serde_json::to_vec(&serde_json::json!({
        "id": d.event_id,
        "type": d.event_type,
        "timestamp": rfc3339(d.occurred_at),
        "data": data,
    }))
    .unwrap_or_default())
}

impl Events {
    /// Sends one delivery and reports how it went; never fails itself.
    pub async fn send(&self, d: &Claimed) -> Outcome {
        let started = Instant::now();
        let fail = |kind: &'static str, excerpt: String| Outcome {
            status_code: None,
            latency: started.elapsed(),
            error_kind: Some(kind),
            excerpt: Some(excerpt),
            retry_after: None,
        };
        let url = match reqwest::Url::parse(&d.url) {
            Ok(u) => u,
            Err(e) => return fail("connect", format!("bad URL: {e}")),
        };
        // Literal IP hosts never reach the resolver: check them here.
        if let Some(host) = url.host_str()
            && let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>()
            && let Err(why) = ssrf::check(ip, &self.allow)
        {
            return fail("blocked_destination", why);
        }
        let secret = match self
            .open_secret(&d.secret, &d.endpoint_id)
            .map_err(|e| e.to_string())
            .and_then(|s| SigningKey::parse(&s).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => return fail("connect", format!("endpoint secret unusable: {e}")),
        };
        let body = match envelope(d) {
            Ok(b) => b,
            // Never send a body other than the event's own; the attempt fails and is retried.
            Err(e) => return fail("stored_data", e.to_string()),
        };
        let ts = self.clock.now().unix_timestamp();
        let mut signature = secret.sign(&d.id, ts, &body);
        // During a rotation both signatures go in the one header; receivers accept either.
        if let (Some(prev), Some(until)) = (&d.previous_secret, d.previous_secret_expires_at)
            && until > self.clock.now_micros()
            && let Ok(prev) = self.open_secret(prev, &d.endpoint_id)
            && let Ok(prev) = SigningKey::parse(&prev)
        {
            signature = format!("{signature} {}", prev.sign(&d.id, ts, &body));
        }
        let mut req = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &d.id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature);
        let extra: std::collections::BTreeMap<String, String> =
            match runway_store::stored_json("endpoint headers", &d.headers) {
                Ok(h) => h,
                Err(e) => return fail("stored_data", e.to_string()),
            };
        for (k, v) in extra {
            req = req.header(k, v);
        }
        match req.body(body).send().await {
            Err(e) => {
                let kind = classify(&e);
                fail(kind, e.to_string())
            }
            Ok(res) => {
                let status = res.status();
                let retry_after = res
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let mut excerpt = Vec::new();
                let mut res = res;
                while excerpt.len() < EXCERPT_BYTES {
                    match res.chunk().await {
                        Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
                        _ => break,
                    }
                }
                excerpt.truncate(EXCERPT_BYTES);
                Outcome {
                    status_code: Some(status.as_u16()),
                    latency: started.elapsed(),
                    error_kind: (!status.is_success()).then_some("status"),
                    excerpt: Some(String::from_utf8_lossy(&excerpt).into_owned()),
                    retry_after,
                }
            }
        }
    }

    /// When to try again after this attempt, or `None` to dead-letter.
    fn next_attempt(&self, d: &Claimed, o: &Outcome) -> Option<i64> {
        if o.succeeded() {
            return None;
        }
        let hint = match (o.status_code, o.error_kind) {
            (Some(429), _) | (_, Some("timeout")) => FailureHint::SlowDown,
            _ => FailureHint::Other,
        };
        let next = u32::try_from(d.attempts + 1).unwrap_or(u32::MAX);
        let wait = self.schedule.delay_before(next, hint, o.retry_after, random_unit())?;
        Some(self.clock.now_micros() + wait.as_micros() as i64)
    }

    /// Renews the lease of a delivery that waited for a sending slot so long that the send could
    /// outlast it; false when the lease was lost meanwhile. Most deliveries get a slot at once
    /// and skip the write.
    async fn keep_lease(&self, d: &mut Claimed) -> Result<bool, StoreError> {
        let now = self.clock.now_micros();
        let timeout = Duration::from_secs(self.config.delivery_timeout_secs);
        if lease_outlasts_send(d.lease_until, now, timeout, Duration::from_secs(self.config.lease_margin_secs)) {
            return Ok(true);
        }
        let mut tx = self.store.write(DbScope::Platform).await?;
        // Timed from when the store is ours: waiting for the writer must not eat into the lease.
        let until = self.clock.now_micros()
            + Duration::from_secs(self.config.delivery_timeout_secs + self.config.lease_margin_secs).as_micros() as i64;
        let n = on_conn!(&mut tx, c => sqlx::query("UPDATE deliveries SET lease_until = $1 WHERE id = $2 AND lease_token = $3 AND status = 'pending'")
            .bind(until).bind(&d.id).bind(&d.lease_token).execute(&mut *c).await.map(|r| r.rows_affected()))?;
        tx.commit().await?;
        metrics::counter!("runway_webhook_leases_renewed_total").increment(1);
        d.lease_until = Some(until);
        // A commit that took most of the margin leaves too little: let the lease run out instead.
        Ok(n == 1 && lease_outlasts_send(d.lease_until, self.clock.now_micros(), timeout, Duration::ZERO))
    }

    /// Sends one held delivery; the attempt is for the recorder, none when nothing was sent
    /// (the lease was lost to another worker).
    async fn process(&self, mut d: Claimed) -> Option<Finished> {
        match self.keep_lease(&mut d).await {
            Ok(true) => {}
            Ok(false) => return None, // another worker holds it now and sends it
            Err(e) => {
                tracing::warn!(error = %e, delivery = %d.id, "could not renew a lease; the delivery is retried after it");
                return None;
            }
        }
        let outcome = self.send(&d).await;
        let retry_at = self.next_attempt(&d, &outcome);
        Some((d, outcome, retry_at))
    }

    /// The endpoint's cap on sends in flight before health narrows it (see `Dispatch::endpoint_cap`).
    pub fn endpoint_cap(&self, plan: &str, own: Option<i64>) -> u32 {
        self.dispatch.endpoint_cap(plan, own)
    }

    /// Counts a send's outcome towards its endpoint's health; a change narrows or restores its
    /// cap here at once and is written to the endpoint (its `health`) and the metrics.
    fn judge(self: &Arc<Self>, d: &Claimed, failed: bool) {
        let cap = self.endpoint_cap(&d.plan, d.max_in_flight);
        let Some(degraded) = self.dispatch.record_outcome(&d.tenant_id, &d.endpoint_id, failed, cap) else { return };
        let endpoint = ENDPOINT_LABELS.label(&d.endpoint_id);
        metrics::gauge!("runway_webhook_endpoint_degraded", "endpoint" => endpoint).set(if degraded {
            1.0
        } else {
            0.0
        });
        metrics::counter!("runway_webhook_endpoint_health_changes_total", "to" => if degraded { "degraded" } else { "healthy" })
            .increment(1);
        if degraded {
            tracing::warn!(endpoint = %d.endpoint_id, tenant = %d.tenant_id, "most recent sends failed; the endpoint gets a quarter of its sends in flight until it recovers");
        } else {
            tracing::info!(endpoint = %d.endpoint_id, tenant = %d.tenant_id, "the endpoint recovered");
        }
        let (me, tenant, ep) = (self.clone(), d.tenant_id.clone(), d.endpoint_id.clone());
        tokio::spawn(async move {
            if let Err(e) = me.note_health(&tenant, &ep, degraded).await {
                tracing::warn!(error = %e, endpoint = %ep, "could not record endpoint health");
            }
        });
    }

    /// Writes finished attempts in batches (whatever has arrived, up to 256, per transaction),
    /// with up to `RECORDERS` transactions at once so recording keeps up with sending. Returns
    /// once every sender is gone and every batch is written.
    async fn record(self: Arc<Self>, mut rx: tokio::sync::mpsc::Receiver<Finished>) {
        let writers = Arc::new(tokio::sync::Semaphore::new(RECORDERS));
        let mut batch = Vec::with_capacity(256);
        while rx.recv_many(&mut batch, 256).await > 0 {
            let Ok(writer) = writers.clone().acquire_owned().await else { return };
            let me = self.clone();
            let batch = std::mem::replace(&mut batch, Vec::with_capacity(256));
            tokio::spawn(async move {
                me.record_batch(batch).await;
                drop(writer);
            });
        }
        let _ = writers.acquire_many(RECORDERS as u32).await;
    }

    async fn record_batch(&self, batch: Vec<Finished>) {
        {
            let record_started = Instant::now();
            let recorded = self.complete(&batch).await;
            metrics::histogram!("runway_webhook_record_duration_seconds")
                .record(record_started.elapsed().as_secs_f64());
            if let Err(e) = recorded {
                // The leases run out and the deliveries are tried again: at least once, never lost.
                tracing::error!(error = %e, count = batch.len(), "could not record delivery attempts");
                return;
            }
            // A keyed delivery that is done lets its key's next one be claimed: claim it now,
            // not at the next poll.
            if batch.iter().any(|(d, o, retry_at)| d.ordering_key.is_some() && (o.succeeded() || retry_at.is_none())) {
                self.wake.notify_one();
            }
            let mut failing: Vec<(String, String)> = batch
                .iter()
                .filter(|(_, o, _)| !o.succeeded())
                .map(|(d, _, _)| (d.tenant_id.clone(), d.endpoint_id.clone()))
                .collect();
            failing.sort();
            failing.dedup();
            for (tenant, endpoint) in failing {
                if let Err(e) = self.note_failure(&tenant, &endpoint).await {
                    tracing::warn!(error = %e, endpoint = %endpoint, "could not update endpoint health");
                }
            }
        }
    }

    /// Sends held deliveries as the scheduler picks them (fair between tenants and endpoints,
    /// within caps and paces) until `stopped`.
    async fn send_held(
        self: Arc<Self>,
        done: tokio::sync::mpsc::Sender<Finished>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            if *stopped.borrow() {
                return;
            }
            let now = pace_clock();
            let (picked, until) = self.dispatch.ready(now);
            for Picked { tenant, endpoint, item } in picked {
                let (me, done) = (self.clone(), done.clone());
                tokio::spawn(async move {
                    // Frees the slot and the place however the task ends, a panic included.
                    struct Done<'a>(&'a Events, &'a str, &'a str);
                    impl Drop for Done<'_> {
                        fn drop(&mut self) {
                            self.0.dispatch.finish(self.1, self.2, pace_clock());
                        }
                    }
                    let _done = Done(&me, &tenant, &endpoint);
                    let finished = me.process(item).await;
                    if let Some((d, o, _)) = &finished {
                        me.judge(d, !o.succeeded());
                    }
                    if let Some(f) = finished {
                        // If the recorder is gone, the lease runs out and the delivery is retried.
                        let _ = done.send(f).await;
                    }
                    // The slot and the place are free once the attempt is with the recorder.
                });
            }
            let wait = match until {
                Some(at) => {
                    metrics::counter!("runway_webhook_pace_waits_total").increment(1);
                    Duration::from_micros((at - now).max(1_000) as u64)
                }
                None => Duration::from_secs(1),
            };
            tokio::select! {
                _ = self.dispatch.pump.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stopped.changed() => return,
            }
        }
    }

    /// Drains the queue until `stop` resolves: claims due deliveries fairly into the held set
    /// (see `dispatch` and `fair`) as room frees, sends them as the scheduler picks them, and
    /// records results in batches. The lease is longer than the HTTP timeout, and renewed for a
    /// delivery that waited long for a slot, so a slow receiver is never sent the same message
    /// twice at once. On stop, held deliveries not yet sending give their leases back (another
    /// replica sends them at once), and sends in flight finish and are recorded.
    pub async fn run_worker(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let timeout = Duration::from_secs(self.config.delivery_timeout_secs);
        let lease = timeout + Duration::from_secs(self.config.lease_margin_secs);
        let poll = Duration::from_millis(self.config.poll_interval_ms.max(10));
        let (done_tx, done_rx) = tokio::sync::mpsc::channel::<Finished>(4 * self.config.worker_concurrency as usize);
        let recorder = tokio::spawn(self.clone().record(done_rx));
        let (stop_tx, stopped) = tokio::sync::watch::channel(false);
        self.dispatch.set_running(true);
        let sender = tokio::spawn(self.clone().send_held(done_tx.clone(), stopped));
        let max_cap = self.dispatch.max_endpoint_cap();
        let min_batch = (self.config.worker_concurrency / 4).max(1) as usize;
        let mut backlog = false;
        tokio::pin!(stop);
        loop {
            let ClaimRoom { mut room, mut skip, mut tenants } = self.dispatch.claim_room();
            if room == 0 {
                // Every claimable place is held: tenants beyond their share give back what waits,
                // so tenants whose deliveries are in the store get theirs.
                let back = self.dispatch.take_excess();
                if !back.is_empty() {
                    match release_leases(&self.store, &back).await {
                        Ok(n) => metrics::counter!("runway_webhook_leases_released_total").increment(n),
                        Err(e) => tracing::warn!(error = %e, "could not give back leases; they run out instead"),
                    }
                    ClaimRoom { room, skip, tenants } = self.dispatch.claim_room();
                }
            }
            if room == 0 || (backlog && room < min_batch) {
                // Wait for room; with a backlog, for a little more, so one claim serves several
                // deliveries instead of one claim transaction per finished send.
                tokio::select! {
                    _ = &mut stop => break,
                    _ = self.dispatch.room.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(if room == 0 { 1_000 } else { 1 })) => backlog = false,
                }
                continue;
            }
            let claim_started = Instant::now();
            let per_endpoint = (room as u32).min(2 * max_cap);
            let claimed = self.claim(room as u32, per_endpoint, &skip, &tenants, lease).await;
            metrics::histogram!("runway_webhook_claim_duration_seconds").record(claim_started.elapsed().as_secs_f64());
            let batch = match claimed {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim deliveries");
                    Vec::new()
                }
            };
            backlog = batch.len() >= room;
            // A tenant whose room this claim filled may have more due: claim again as places free.
            let room_filled = tenants.filled(batch.iter().map(|c| c.tenant_id.as_str()));
            let held: Vec<(Claimed, Share)> = batch
                .into_iter()
                .map(|c| {
                    let share = self.dispatch.share_of(&c);
                    (c, share)
                })
                .collect();
            self.dispatch.hold(held);
            // Endpoints holding their share now (trimmed by this claim, or before it).
            let held_back = room_filled || self.dispatch.any_full_endpoint();
            if !backlog {
                // Nothing more due (or only for endpoints and tenants holding their share): sleep
                // until something is queued, a retry falls due, or (when some were left alone for
                // their share) a place frees.
                tokio::select! {
                    _ = &mut stop => break,
                    _ = self.wake.notified() => {}
                    _ = self.dispatch.room.notified(), if held_back => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
        // Shutdown: no more sends start; what is held but not sending goes back to the queue.
        let _ = stop_tx.send(true);
        let unsent = self.dispatch.stop();
        if !unsent.is_empty() {
            match release_leases(&self.store, &unsent).await {
                Ok(n) => tracing::info!(released = n, "gave back the leases of held deliveries"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not give back leases; those deliveries wait for them to run out")
                }
            }
            metrics::counter!("runway_webhook_leases_released_total").increment(unsent.len() as u64);
        }
        // Sends in flight end within the HTTP timeout; their attempts are recorded.
        let deadline = Instant::now() + timeout + Duration::from_secs(2);
        while self.dispatch.in_flight() > 0 && Instant::now() < deadline {
            tokio::select! {
                _ = self.dispatch.room.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        let _ = sender.await;
        drop(done_tx);
        if tokio::time::timeout(Duration::from_secs(5), recorder).await.is_err() {
            tracing::warn!("attempts still being recorded at shutdown; their leases run out and they are retried");
        }
    }
}

/// Gives back the leases of deliveries held but never sent, so any worker claims them now
/// instead of after the lease runs out. Only the holder's own lease is cleared.
pub(crate) async fn release_leases(store: &runway_store::Store, held: &[Claimed]) -> Result<u64, StoreError> {
    let mut tx = store.write(DbScope::Platform).await?;
    let mut released = 0;
    for d in held {
        released += on_conn!(&mut tx, c => sqlx::query(
            "UPDATE deliveries SET lease_until = NULL, lease_token = NULL WHERE id = $1 AND lease_token = $2 AND status = 'pending'")
            .bind(&d.id).bind(&d.lease_token).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    }
    tx.commit().await?;
    Ok(released)
}

/// Tenants shown by name in the per-tenant delivery gauges; the rest are summed as `other`.
pub const TOP_TENANTS: usize = 10;

/// Tenant label values ever given a series of their own by this process, bounded so that
/// tenants taking turns at the top cannot grow the series without limit.
static TENANT_LABELS: std::sync::LazyLock<runway_core::labels::BoundedLabels> =
    std::sync::LazyLock::new(|| runway_core::labels::BoundedLabels::new(50));

/// The per-tenant delivery gauges: queue depth and oldest pending age for the tenants with the
/// largest backlogs (the rest summed as `other`), and sending slots in use per tenant. A tenant
/// shown before and absent now is set to 0, so its series does not keep a stale value; `shown`
/// carries those between scrapes.
pub(crate) fn tenant_gauges(
    now: i64,
    mut backlog: Vec<(String, i64, i64)>,
    slots: Vec<(String, usize)>,
    shown: &mut std::collections::BTreeSet<String>,
) -> Vec<(&'static str, Vec<(String, f64)>)> {
    use std::collections::BTreeMap;
    backlog.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut depth: BTreeMap<String, f64> = BTreeMap::new();
    let mut oldest: BTreeMap<String, f64> = BTreeMap::new();
    let mut in_use: BTreeMap<String, f64> = BTreeMap::new();
    let other = runway_core::labels::OTHER.to_owned();
    for (i, (tenant, count, first)) in backlog.into_iter().enumerate() {
        let label = if i < TOP_TENANTS { TENANT_LABELS.label(&tenant) } else { other.clone() };
        *depth.entry(label.clone()).or_default() += count as f64;
        let age = (now - first).max(0) as f64 / 1e6;
        let o = oldest.entry(label).or_default();
        *o = o.max(age);
    }
    for (tenant, n) in slots {
        let label =
            if shown.contains(&tenant) || depth.contains_key(&tenant) { tenant } else { TENANT_LABELS.label(&tenant) };
        *in_use.entry(label).or_default() += n as f64;
    }
    let now_shown: std::collections::BTreeSet<String> = depth.keys().chain(in_use.keys()).cloned().collect();
    for gone in shown.difference(&now_shown) {
        depth.entry(gone.clone()).or_default();
        oldest.entry(gone.clone()).or_default();
        in_use.entry(gone.clone()).or_default();
    }
    for map in [&mut depth, &mut oldest, &mut in_use] {
        for t in &now_shown {
            map.entry(t.clone()).or_default();
        }
    }
    *shown = now_shown;
    vec![
        ("runway_webhook_tenant_queue_depth", depth.into_iter().collect()),
        ("runway_webhook_tenant_oldest_pending_age_seconds", oldest.into_iter().collect()),
        ("runway_webhook_tenant_slots_in_use", in_use.into_iter().collect()),
    ]
}

/// Microseconds on a monotonic clock, for pacing: a pace is about real sending rate, not the
/// business clock (which tests may hold still).
fn pace_clock() -> i64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as i64
}

/// Recording transactions in flight at once; batches hold disjoint deliveries.
const RECORDERS: usize = 2;

/// Whether a lease lasts through the longest possible send with half the margin to spare: a
/// delivery that waited less than half the margin for its slot needs no renewal.
fn lease_outlasts_send(lease_until: Option<i64>, now: i64, timeout: Duration, margin: Duration) -> bool {
    lease_until.is_some_and(|until| until - now >= (timeout + margin / 2).as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_gauges_show_the_top_backlogs_and_sum_the_rest() {
        let backlog: Vec<(String, i64, i64)> =
            (0..15).map(|i| (format!("tnt_g{i:02}"), 100 - i as i64, 1_000_000)).collect();
        let mut shown = Default::default();
        let gauges = tenant_gauges(3_000_000, backlog, vec![("tnt_g00".into(), 3)], &mut shown);
        let depth: std::collections::BTreeMap<String, f64> = gauges[0].1.iter().cloned().collect();
        assert_eq!(depth.len(), TOP_TENANTS + 1, "ten tenants and other: {depth:?}");
        assert_eq!(depth["tnt_g00"], 100.0);
        assert_eq!(depth["other"], (86..=90).sum::<i64>() as f64, "the five smallest backlogs are summed");
        assert_eq!(gauges[1].1.iter().find(|(t, _)| t == "tnt_g03").unwrap().1, 2.0, "oldest pending age in seconds");
        let slots: std::collections::BTreeMap<String, f64> = gauges[2].1.iter().cloned().collect();
        assert_eq!(slots["tnt_g00"], 3.0);
        // The next scrape: the backlog is gone; every series shown before goes to 0, once.
        let gauges = tenant_gauges(3_000_000, Vec::new(), Vec::new(), &mut shown);
        assert!(gauges[0].1.iter().all(|(_, v)| *v == 0.0) && gauges[0].1.len() == TOP_TENANTS + 1);
        let gauges = tenant_gauges(3_000_000, Vec::new(), Vec::new(), &mut shown);
        assert!(gauges[0].1.is_empty(), "series at 0 are not set again");
    }

    #[test]
    fn a_lease_must_cover_the_whole_timeout_plus_half_the_margin() {
        let (timeout, margin) = (Duration::from_secs(15), Duration::from_secs(30));
        let now = 1_000_000_000;
        assert!(lease_outlasts_send(Some(now + 45_000_000), now, timeout, margin), "fresh 45 s lease");
        assert!(lease_outlasts_send(Some(now + 30_000_000), now, timeout, margin), "waited 15 s: still enough");
        assert!(!lease_outlasts_send(Some(now + 29_999_999), now, timeout, margin), "renew before it gets tight");
        assert!(!lease_outlasts_send(Some(now - 1), now, timeout, margin), "already expired");
        assert!(!lease_outlasts_send(None, now, timeout, margin), "no lease recorded");
    }
}
