//! Evaluation: once per `slo.eval_interval_ms`, by the one replica holding the lease in
//! `slo_state`, every SLO (and every tenant of a per-tenant SLO) moves its sliding sums
//! forward ([`crate::math::Series`]), gets a status (SLI, budget, burn rates, alerts) stored in
//! `slo_status`, and opens or resolves alerts in `slo_alerts` with their notifications:
//! operational events, Alertmanager webhooks, and release-plan guards that watch the SLO.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use runway_audit::catalog::{self, Stored};
use runway_core::ApiError;
use runway_core::id::{SloAlertId, SloId};
use runway_flags::plans::{GuardSignal, GuardTarget};
use runway_store::{DbScope, StoreError, on_conn};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::math::{self, AlertState, Counts, Series, Severity};
use crate::model::{Compliance, SliSpec, Slo, SloSpec};
use crate::{Service, Slos};

/// The budget of the compliance window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BudgetOut {
    /// Bad events the objective allows over the events seen so far.
    pub allowed: f64,
    /// Bad events so far.
    pub spent: f64,
    /// The share left: 1 untouched, 0 spent, below 0 overspent; absent without events.
    pub remaining: Option<f64>,
}

/// The burn rate over one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BurnOut {
    /// The window, written `5m`, `1h`, `3d`.
    #[schema(example = "1h")]
    pub window: String,
    /// Its length in minutes.
    pub minutes: i64,
    /// Error rate over the allowed error rate (1 spends the budget in exactly one SLO window);
    /// absent without events.
    pub burn_rate: Option<f64>,
    /// Events in the window.
    pub total: f64,
}

/// One alert condition as of the last evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertNow {
    /// `page-1h-5m`, `ticket-1d-2h`, …, or `no-data`.
    pub name: String,
    /// `page` or `ticket`; absent for `no-data`.
    pub severity: Option<Severity>,
    /// `ok`, `firing` or `no_data` (no events in the long window).
    pub state: AlertState,
}

/// An SLO's (or one tenant's) state as of its last evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SloStatus {
    /// The SLO's ID.
    #[schema(value_type = String)]
    pub slo: String,
    /// The tenant, for per-tenant SLOs.
    pub tenant: Option<String>,
    /// When it was evaluated (RFC 3339).
    pub evaluated_at: String,
    /// The start of the compliance window (RFC 3339).
    pub window_start: String,
    /// The objective in percent.
    pub objective: f64,
    /// Good events (minutes, for timeslices) in the compliance window.
    pub good: f64,
    /// All events (minutes with events, for timeslices) in the compliance window.
    pub total: f64,
    /// Good over all; absent without events.
    pub sli: Option<f64>,
    /// The error budget of the compliance window.
    pub budget: BudgetOut,
    /// The burn rate over each alert window, shortest first.
    pub burn_rates: Vec<BurnOut>,
    /// Each alert condition.
    pub alerts: Vec<AlertNow>,
    /// Seconds until the budget is spent at the burn rate of the first alert's long window;
    /// absent when nothing burns.
    pub time_to_exhaustion_secs: Option<f64>,
}

struct Entry {
    version: i64,
    slo: Slo,
    compliance: Compliance,
    /// Alert window lengths in minutes, distinct, shortest first; series window `i + 1`.
    lengths: Vec<i64>,
    series: HashMap<String, Series>,
    /// The minute of the last step; `None` before the first.
    last: Option<i64>,
}

impl Entry {
    fn starts(&self, now: i64) -> Vec<i64> {
        let mut s = vec![self.compliance.start(now)];
        s.extend(self.lengths.iter().map(|l| now - l + 1));
        s
    }

    fn index(&self, minutes: i64) -> usize {
        1 + self.lengths.iter().position(|&l| l == minutes).unwrap_or(0)
    }
}

/// One replica's evaluation state; rebuilt per SLO when its version changes.
pub struct Evaluator {
    late: i64,
    revision: i64,
    entries: BTreeMap<SloId, Entry>,
}

/// What a cycle did, for logs, metrics and the benchmark.
#[derive(Debug, Clone, Default)]
pub struct CycleReport {
    pub slos: usize,
    pub series: usize,
    pub store_queries: usize,
    pub rows_read: usize,
    pub opened: usize,
    pub resolved: usize,
}

impl Evaluator {
    pub fn new(late: i64) -> Self {
        Evaluator { late, revision: -1, entries: BTreeMap::new() }
    }
}

/// A transition to notify after the commit.
struct Transition {
    slo: Slo,
    tenant: Option<String>,
    alert: String,
    severity: Option<Severity>,
    firing: bool,
    status: SloStatus,
}

/// Statuses written per statement: 3 parameters each, well under both engines' limits.
const STATUS_BATCH: usize = 200;

fn store_err(e: sqlx::Error) -> ApiError {
    StoreError::from(e).into()
}

/// Raw per-minute counts of one SLO's series: tenant → minute → counts.
type Raw = HashMap<String, HashMap<i64, Counts>>;

/// One route's rows read in a cycle: minute → (tenant, counts). Minutes hash with FxHash: the
/// cold cycle looks up every minute of 30 days for every SLO.
type MinuteRows = HashMap<i64, Vec<(String, runway_gateway::records::MinuteCounts)>, rustc_hash::FxBuildHasher>;

/// Gateway rows read in a cycle, by route.
type RouteMinutes = HashMap<String, MinuteRows>;

/// Adds counts to a series' minute without allocating the tenant again once it is known.
fn add_raw(raw: &mut Raw, tenant: &str, minute: i64, c: Counts) {
    if let Some(m) = raw.get_mut(tenant) {
        m.entry(minute).or_default().add(c);
    } else {
        raw.entry(tenant.to_owned()).or_default().insert(minute, c);
    }
}

/// One gateway record as an SLO counts it: the series (its tenant for per-tenant SLOs, else
/// empty) and good and total; `None` when the record is not the SLO's (another route, tenant
/// or plan). `plans` maps tenant IDs to plans, for SLOs narrowed to a plan.
pub fn gateway_counts<'k>(
    spec: &SloSpec,
    route: &str,
    tenant: &'k str,
    rec: &runway_gateway::records::MinuteCounts,
    thresholds: &[u32],
    plans: &HashMap<String, String>,
) -> Option<(&'k str, Counts)> {
    match &spec.sli {
        SliSpec::Availability(g) | SliSpec::Latency(g) if g.routes.iter().any(|r| r == route) => {
            Lens::new(spec, thresholds, plans)?.counts(tenant, rec)
        }
        _ => None,
    }
}

/// How one gateway SLO reads a minute's counts, worked out once per cycle rather than per
/// minute (the cold cycle reads 30 days of minutes for every SLO).
pub struct Lens<'a> {
    /// For a latency SLI, its threshold's index in the thresholds read.
    latency: Option<usize>,
    throttled_is_bad: bool,
    tenant: Option<&'a str>,
    plan: Option<&'a str>,
    per_tenant: bool,
    plans: &'a HashMap<String, String>,
}

impl<'a> Lens<'a> {
    /// `None` for a pushed SLI, or a latency threshold that was not read.
    pub fn new(spec: &'a SloSpec, thresholds: &[u32], plans: &'a HashMap<String, String>) -> Option<Self> {
        let (g, latency) = match &spec.sli {
            SliSpec::Availability(g) => (g, None),
            SliSpec::Latency(g) => (g, Some(thresholds.iter().position(|t| Some(*t) == g.threshold_ms)?)),
            SliSpec::Pushed(_) => return None,
        };
        Some(Lens {
            latency,
            throttled_is_bad: g.throttled_is_bad,
            tenant: g.tenant.as_deref(),
            plan: g.plan.as_deref(),
            per_tenant: spec.per_tenant,
            plans,
        })
    }

    /// What makes two SLOs read the same minutes alike: their routes and this lens.
    pub fn key(&self, routes: &[String]) -> String {
        format!(
            "{routes:?}|{:?}|{}|{:?}|{:?}|{}",
            self.latency, self.throttled_is_bad, self.tenant, self.plan, self.per_tenant
        )
    }

    /// The series (the tenant for per-tenant SLOs, else empty) and good and total of one row
    /// of one of the SLO's routes; `None` when the row's tenant or plan is not the SLO's.
    pub fn counts<'k>(
        &self,
        tenant: &'k str,
        rec: &runway_gateway::records::MinuteCounts,
    ) -> Option<(&'k str, Counts)> {
        if self.tenant.is_some_and(|t| t != tenant)
            || self.plan.is_some_and(|p| self.plans.get(tenant).map(String::as_str) != Some(p))
        {
            return None;
        }
        let total = rec.total as f64;
        let good = match self.latency {
            Some(i) => rec.at_or_below[i] as f64,
            None => total - (rec.server_errors + if self.throttled_is_bad { rec.throttled } else { 0 }) as f64,
        };
        Some((if self.per_tenant { tenant } else { "" }, Counts::new(good, total)))
    }
}

/// The latency thresholds some SLOs ask for, sorted, each once.
pub fn thresholds<'a>(specs: impl Iterator<Item = &'a SloSpec>) -> Vec<u32> {
    let mut t: Vec<u32> = specs
        .filter_map(|s| match &s.sli {
            SliSpec::Latency(g) => g.threshold_ms,
            _ => None,
        })
        .collect();
    t.sort_unstable();
    t.dedup();
    t
}

fn in_ranges(ranges: &[(i64, i64)], m: i64) -> bool {
    ranges.iter().any(|&(a, b)| a <= m && m <= b)
}

impl Service {
    /// Takes or renews the evaluation lease; false when another replica holds it.
    pub async fn take_lease(&self) -> Result<bool, ApiError> {
        // Wall time, not the injected clock: a lease says this process is alive, which a test's
        // manual clock (holding SLO time still) must not stretch forever.
        let now = runway_core::Clock::now_micros(&runway_core::SystemClock);
        let until = now + (self.config.eval_interval_ms as i64 * 3).max(3_000) * 1000;
        let mut tx = self.store.write(DbScope::Platform).await?;
        let n = on_conn!(&mut tx, c => sqlx::query(
            "UPDATE slo_state SET lease_owner = $1, lease_until = $2 WHERE id = 1 AND (lease_owner = $1 OR lease_until < $3)")
            .bind(&self.replica).bind(until).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))
        .map_err(store_err)?;
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Evaluates while `stop` has not fired: each interval, when this replica holds the lease.
    pub async fn run_evaluator(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(self.config.eval_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    match self.take_lease().await {
                        Ok(true) => {
                            let started = std::time::Instant::now();
                            match self.evaluate().await {
                                Ok(r) => {
                                    metrics::histogram!("runway_slo_evaluation_seconds").record(started.elapsed().as_secs_f64());
                                    metrics::gauge!("runway_slo_evaluated_series").set(r.series as f64);
                                    tracing::debug!(slos = r.slos, series = r.series, queries = r.store_queries, "SLOs evaluated");
                                }
                                Err(e) => {
                                    metrics::counter!("runway_slo_evaluation_failures_total").increment(1);
                                    tracing::warn!(error = %e, "SLO evaluation failed");
                                }
                            }
                        }
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, "could not take the SLO evaluation lease"),
                    }
                }
                _ = &mut stop => break,
            }
        }
    }

    /// One evaluation cycle over every SLO. Public so tests and the benchmark can drive it.
    pub async fn evaluate(&self) -> Result<CycleReport, ApiError> {
        let mut ev = self.evaluator.lock().await;
        let mut report = CycleReport::default();
        let now_us = self.clock.now_micros();
        let now = now_us.div_euclid(60_000_000);
        let late = ev.late;

        // The SLOs, reloaded when the catalog moved.
        let revision = catalog::revision(&self.store, &crate::TABLES).await?;
        report.store_queries += 1;
        let mut removed: Vec<SloId> = Vec::new();
        if revision != ev.revision {
            let live: Vec<Stored<Slo>> = catalog::list::<Slos>(&self.store).await?;
            report.store_queries += 1;
            let ids: HashSet<SloId> = live.iter().map(|s| s.doc.id.clone()).collect();
            removed = ev.entries.keys().filter(|k| !ids.contains(*k)).cloned().collect();
            ev.entries.retain(|k, _| ids.contains(k));
            for s in live {
                if ev.entries.get(&s.doc.id).is_some_and(|e| e.version == s.version) {
                    continue;
                }
                let Ok(compliance) = s.doc.spec.compliance() else {
                    tracing::warn!(slo = %s.doc.id, "a stored SLO no longer validates; skipped");
                    continue;
                };
                let mut lengths: Vec<i64> =
                    s.doc.spec.alerting.windows.iter().flat_map(|w| [w.long_minutes, w.short_minutes]).collect();
                lengths.sort_unstable();
                lengths.dedup();
                ev.entries.insert(
                    s.doc.id.clone(),
                    Entry { version: s.version, slo: s.doc, compliance, lengths, series: HashMap::new(), last: None },
                );
            }
            ev.revision = revision;
        }
        report.slos = ev.entries.len();

        // Tenants' plans, when an SLO filters by plan.
        let needs_plans = ev.entries.values().any(|e| match &e.slo.spec.sli {
            SliSpec::Availability(g) | SliSpec::Latency(g) => g.plan.is_some(),
            SliSpec::Pushed(_) => false,
        });
        let plans: HashMap<String, String> = if needs_plans {
            report.store_queries += 1;
            self.identity.tenant_plans().await?.into_iter().map(|(t, p)| (t.as_str().to_owned(), p)).collect()
        } else {
            HashMap::new()
        };

        // What each SLO needs read: the whole window on its first step, then the recent
        // minutes and those leaving a window.
        let mut needs: HashMap<SloId, Vec<(i64, i64)>> = HashMap::new();
        for (id, e) in &ev.entries {
            let starts = e.starts(now);
            let mut r: Vec<(i64, i64)> = match e.last {
                None => vec![(starts.iter().copied().min().unwrap_or(now), now)],
                Some(prev) => {
                    let mut r = vec![(prev - late + 1, now)];
                    for s in e.series.values() {
                        r.extend(s.needs(now, &starts));
                    }
                    r
                }
            };
            r = math::merge(r);
            needs.insert(id.clone(), r);
        }

        // Read gateway records and pushed counts for those ranges, once per range.
        let mut pushed_raw: HashMap<SloId, Raw> = HashMap::new();
        // SLOs already evaluated read the recent and departing minutes of all their routes in a
        // few ranges; a new or changed SLO reads its whole window, of its own routes only.
        let thresholds = thresholds(ev.entries.values().map(|e| &e.slo.spec));
        // Each read feeds only its group (steady or fresh), so a minute both read is counted once.
        let mut reads: Vec<(bool, Vec<String>, (i64, i64))> = Vec::new();
        let gateway = |e: &Entry| !matches!(e.slo.spec.sli, SliSpec::Pushed(_));
        let routes_of = |ids: &mut dyn Iterator<Item = &Entry>| {
            let mut r: Vec<String> = ids
                .filter_map(|e| match &e.slo.spec.sli {
                    SliSpec::Availability(g) | SliSpec::Latency(g) => Some(g.routes.clone()),
                    SliSpec::Pushed(_) => None,
                })
                .flatten()
                .collect();
            r.sort();
            r.dedup();
            r
        };
        let steady_routes = routes_of(&mut ev.entries.values().filter(|e| gateway(e) && e.last.is_some()));
        let steady = math::merge(
            ev.entries
                .iter()
                .filter(|(_, e)| gateway(e) && e.last.is_some())
                .flat_map(|(id, _)| needs[id].clone())
                .collect(),
        );
        reads.extend(steady.into_iter().map(|r| (false, steady_routes.clone(), r)));
        let fresh_routes = routes_of(&mut ev.entries.values().filter(|e| gateway(e) && e.last.is_none()));
        let fresh = math::merge(
            ev.entries
                .iter()
                .filter(|(_, e)| gateway(e) && e.last.is_none())
                .flat_map(|(id, _)| needs[id].clone())
                .collect(),
        );
        reads.extend(fresh.into_iter().map(|r| (true, fresh_routes.clone(), r)));
        // Rows by route and minute, one store per group; SLOs read them through their own lens.
        let (mut steady_rows, mut fresh_rows) = (RouteMinutes::new(), RouteMinutes::new());
        for (fresh, routes, (a, b)) in &reads {
            let rows = runway_gateway::records::minute_counts(&self.store, routes, a * 60, b * 60, &thresholds).await?;
            report.store_queries += 1;
            report.rows_read += rows.len();
            let into = if *fresh { &mut fresh_rows } else { &mut steady_rows };
            for (key, rec) in rows {
                into.entry(key.route)
                    .or_default()
                    .entry(key.minute.div_euclid(60))
                    .or_default()
                    .push((key.tenant, rec));
            }
        }
        let pushed: Vec<&SloId> =
            ev.entries.iter().filter(|(_, e)| matches!(e.slo.spec.sli, SliSpec::Pushed(_))).map(|(id, _)| id).collect();
        if !pushed.is_empty() {
            let ranges = math::merge(pushed.iter().flat_map(|id| needs[*id].clone()).collect());
            for (a, b) in ranges {
                let mut tx = self.store.read(DbScope::Platform).await?;
                let rows: Vec<(String, String, i64, i64, i64)> = on_conn!(&mut tx, c => sqlx::query_as(
                    "SELECT slo_id, tenant_id, minute, CAST(SUM(good) AS BIGINT), CAST(SUM(total) AS BIGINT) FROM slo_observations
                     WHERE minute >= $1 AND minute <= $2 GROUP BY slo_id, tenant_id, minute")
                    .bind(a * 60).bind(b * 60).fetch_all(&mut *c).await)
                .map_err(store_err)?;
                report.store_queries += 1;
                report.rows_read += rows.len();
                for (slo, tenant, minute, good, total) in rows {
                    let id = SloId::from_trusted(slo);
                    let minute = minute.div_euclid(60);
                    if needs.get(&id).is_some_and(|r| in_ranges(r, minute)) {
                        add_raw(
                            pushed_raw.entry(id).or_default(),
                            &tenant,
                            minute,
                            Counts::new(good as f64, total as f64),
                        );
                    }
                }
            }
        }

        // Step every series and work out its status.
        let evaluated_at = runway_core::clock::rfc3339(now_us);
        let mut statuses: Vec<(SloId, String, SloStatus)> = Vec::new();
        let fresh_lo = ev
            .entries
            .iter()
            .filter(|(_, e)| e.last.is_none())
            .flat_map(|(id, _)| needs[id].iter().map(|r| r.0))
            .min()
            .unwrap_or(now);
        let mut walks: HashMap<String, Vec<Counts>> = HashMap::new();
        for (id, e) in ev.entries.iter_mut() {
            let pushed = pushed_raw.remove(id).unwrap_or_default();
            let rows = if e.last.is_none() { &fresh_rows } else { &steady_rows };
            let spec = &e.slo.spec;
            let routes: &[String] = match &spec.sli {
                SliSpec::Availability(g) | SliSpec::Latency(g) => &g.routes,
                SliSpec::Pushed(_) => &[],
            };
            let lens = Lens::new(spec, &thresholds, &plans);
            let maps: Vec<&MinuteRows> = routes.iter().filter_map(|r| rows.get(r)).collect();
            let mut tenants: HashSet<String> = HashSet::new();
            if !spec.per_tenant {
                tenants.insert(String::new());
            } else {
                tenants.extend(e.series.keys().cloned());
                tenants.extend(pushed.keys().cloned());
                if let Some(lens) = &lens {
                    for (t, rec) in maps.iter().flat_map(|m| m.values()).flatten() {
                        if !tenants.contains(t) && lens.counts(t, rec).is_some() {
                            tenants.insert(t.clone());
                        }
                    }
                }
            }
            let starts = e.starts(now);
            let method = spec.budgeting_method;
            let target = spec.timeslice_target.unwrap_or(100.0) / 100.0;
            // A first step walks the whole window: SLOs reading the same routes through the same
            // lens (availability and latency of one route, several objectives) share one walk.
            let shared = match (&lens, spec.per_tenant, e.last) {
                (Some(lens), false, None) => {
                    let key = lens.key(routes);
                    let lo = fresh_lo.min(now);
                    Some(&*walks.entry(key).or_insert_with(|| {
                        (lo..=now)
                            .map(|m| {
                                let mut c = Counts::default();
                                for by in &maps {
                                    for (t, rec) in by.get(&m).map(Vec::as_slice).unwrap_or_default() {
                                        if let Some((_, x)) = lens.counts(t, rec) {
                                            c.add(x);
                                        }
                                    }
                                }
                                c
                            })
                            .collect()
                    }))
                    .map(|walk: &Vec<Counts>| (lo, walk))
                }
                _ => None,
            };
            let mut stepped = Vec::with_capacity(tenants.len());
            for tenant in tenants {
                let mut series = e.series.remove(&tenant).unwrap_or_else(|| Series::new(late));
                let minutes = pushed.get(&tenant);
                let value = |m: i64| {
                    let mut raw = minutes.and_then(|d| d.get(&m)).copied().unwrap_or_default();
                    if let Some((lo, walk)) = shared {
                        if let Some(c) = usize::try_from(m - lo).ok().and_then(|i| walk.get(i)) {
                            raw.add(*c);
                        }
                    } else if let Some(lens) = &lens {
                        for by in &maps {
                            for (t, rec) in by.get(&m).map(Vec::as_slice).unwrap_or_default() {
                                if let Some((series_of, c)) = lens.counts(t, rec)
                                    && series_of == tenant
                                {
                                    raw.add(c);
                                }
                            }
                        }
                    }
                    if raw.is_empty() { Counts::default() } else { math::slice(raw, method, target) }
                };
                series.step(now, &starts, &value);
                stepped.push((tenant, series));
            }
            for (tenant, series) in stepped {
                let status = status_of(e, &series, now, &evaluated_at, (!tenant.is_empty()).then(|| tenant.clone()));
                e.series.insert(tenant.clone(), series);
                statuses.push((id.clone(), tenant, status));
            }
            e.last = Some(now);
        }
        report.series = statuses.len();
        let slo_docs: HashMap<String, Slo> =
            ev.entries.iter().map(|(k, e)| (k.as_str().to_owned(), e.slo.clone())).collect();
        drop(ev);

        // Store statuses and alert transitions in one transaction.
        let mut transitions: Vec<Transition> = Vec::new();
        let mut tx = self.store.write(DbScope::Platform).await?;
        let open: Vec<(String, String, String, String)> = on_conn!(&mut tx, c => sqlx::query_as(
            "SELECT id, slo_id, tenant_id, alert FROM slo_alerts WHERE resolved_at IS NULL")
            .fetch_all(&mut *c).await)
        .map_err(store_err)?;
        report.store_queries += 1;
        let mut open_by: HashMap<(String, String, String), String> =
            open.into_iter().map(|(aid, slo, tenant, alert)| ((slo, tenant, alert), aid)).collect();
        // Statuses in multi-row upserts of up to STATUS_BATCH rows.
        for chunk in statuses.chunks(STATUS_BATCH) {
            let texts: Vec<String> = chunk
                .iter()
                .map(|(_, _, st)| serde_json::to_string(st))
                .collect::<Result<_, _>>()
                .map_err(ApiError::internal)?;
            let values: Vec<String> =
                (0..chunk.len()).map(|i| format!("(${}, ${}, $1, ${})", 3 * i + 2, 3 * i + 3, 3 * i + 4)).collect();
            let sql = format!(
                "INSERT INTO slo_status (slo_id, tenant_id, evaluated_at, status) VALUES {}
                 ON CONFLICT (slo_id, tenant_id) DO UPDATE SET evaluated_at = excluded.evaluated_at, status = excluded.status",
                values.join(", ")
            );
            on_conn!(&mut tx, c => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(now_us);
                for ((id, tenant, _), text) in chunk.iter().zip(&texts) {
                    q = q.bind(id.as_str()).bind(tenant).bind(text);
                }
                q.execute(&mut *c).await.map(|_| ())
            })
            .map_err(store_err)?;
            report.store_queries += 1;
        }
        for (id, tenant, status) in &statuses {
            let Some(slo) = slo_docs.get(id.as_str()) else { continue };
            for a in &status.alerts {
                let key = (id.as_str().to_owned(), tenant.clone(), a.name.clone());
                let firing = a.state == AlertState::Firing;
                match (firing, open_by.remove(&key)) {
                    (true, None) => {
                        let details = json!({"severity": a.severity, "status": status}).to_string();
                        on_conn!(&mut tx, c => sqlx::query(
                            "INSERT INTO slo_alerts (id, slo_id, tenant_id, alert, severity, opened_at, resolved_at, details) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7)")
                            .bind(SloAlertId::generate().as_str()).bind(id.as_str()).bind(tenant).bind(&a.name)
                            .bind(a.severity.map_or("none", Severity::as_str)).bind(now_us).bind(&details)
                            .execute(&mut *c).await.map(|_| ()))
                        .map_err(store_err)?;
                        report.opened += 1;
                    }
                    (false, Some(aid)) => {
                        resolve(&mut tx, &aid, now_us).await?;
                        report.resolved += 1;
                    }
                    _ => continue,
                }
                report.store_queries += 1;
                transitions.push(Transition {
                    slo: slo.clone(),
                    tenant: status.tenant.clone(),
                    alert: a.name.clone(),
                    severity: a.severity,
                    firing,
                    status: status.clone(),
                });
            }
        }
        // Alerts of SLOs that are gone (or whose conditions were edited away) resolve.
        for aid in open_by.into_values() {
            resolve(&mut tx, &aid, now_us).await?;
            report.store_queries += 1;
            report.resolved += 1;
        }
        for id in &removed {
            on_conn!(&mut tx, c => sqlx::query("DELETE FROM slo_status WHERE slo_id = $1").bind(id.as_str()).execute(&mut *c).await.map(|_| ()))
                .map_err(store_err)?;
            report.store_queries += 1;
        }
        tx.commit().await?;

        self.publish_gauges(&statuses, &slo_docs);
        for t in transitions {
            self.notify(t).await;
        }
        if now % 60 == 0 {
            self.purge(now_us).await?;
        }
        Ok(report)
    }

    async fn purge(&self, now_us: i64) -> Result<(), ApiError> {
        let keep_obs = now_us / 1_000_000 - (crate::model::MAX_WINDOW_DAYS + 1) * 86_400;
        let keep_alerts = now_us - i64::from(self.config.alert_retention_days) * 86_400 * 1_000_000;
        let mut tx = self.store.write(DbScope::Platform).await?;
        on_conn!(&mut tx, c => sqlx::query("DELETE FROM slo_observations WHERE minute < $1").bind(keep_obs).execute(&mut *c).await.map(|_| ()))
            .map_err(store_err)?;
        on_conn!(&mut tx, c => sqlx::query("DELETE FROM slo_alerts WHERE resolved_at IS NOT NULL AND resolved_at < $1").bind(keep_alerts).execute(&mut *c).await.map(|_| ()))
            .map_err(store_err)?;
        tx.commit().await?;
        Ok(())
    }

    fn publish_gauges(&self, statuses: &[(SloId, String, SloStatus)], docs: &HashMap<String, Slo>) {
        let mut seen = Vec::new();
        for (id, tenant, s) in statuses {
            let Some(slo) = docs.get(id.as_str()) else { continue };
            let tenant = if tenant.is_empty() { String::new() } else { self.tenant_labels.label(tenant) };
            let labels = vec![
                ("slo".to_owned(), id.as_str().to_owned()),
                ("service".to_owned(), slo.spec.service.clone()),
                ("name".to_owned(), slo.spec.name.clone()),
                ("tenant".to_owned(), tenant),
            ];
            metrics::gauge!("runway_slo_sli", &labels).set(s.sli.unwrap_or(f64::NAN));
            metrics::gauge!("runway_slo_objective", &labels).set(s.objective / 100.0);
            metrics::gauge!("runway_slo_budget_remaining", &labels).set(s.budget.remaining.unwrap_or(f64::NAN));
            for b in &s.burn_rates {
                let mut l = labels.clone();
                l.push(("window".to_owned(), b.window.clone()));
                metrics::gauge!("runway_slo_burn_rate", &l).set(b.burn_rate.unwrap_or(f64::NAN));
            }
            for a in &s.alerts {
                let mut l = labels.clone();
                l.push(("alert".to_owned(), a.name.clone()));
                metrics::gauge!("runway_slo_alert_firing", &l).set(if a.state == AlertState::Firing {
                    1.0
                } else {
                    0.0
                });
            }
            seen.push(labels);
        }
        let mut last = self.gauges.lock().unwrap_or_else(|e| e.into_inner());
        for gone in last.iter().filter(|l| !seen.contains(l)) {
            metrics::gauge!("runway_slo_sli", gone).set(f64::NAN);
            metrics::gauge!("runway_slo_budget_remaining", gone).set(f64::NAN);
        }
        *last = seen;
    }

    /// Tells the world about one transition: an operational event, the SLO's Alertmanager
    /// receivers, and (for page alerts) the release-plan guards that watch the SLO.
    async fn notify(&self, t: Transition) {
        let state = if t.firing { "firing" } else { "resolved" };
        let kind = if t.firing { "slo.alert.opened" } else { "slo.alert.resolved" };
        let burns: Vec<String> =
            t.status.burn_rates.iter().filter_map(|b| b.burn_rate.map(|r| format!("{} {:.1}", b.window, r))).collect();
        let summary = format!(
            "SLO `{}` of {} ({}){}: `{}` {state}; burn rates {}",
            t.slo.spec.name,
            t.slo.spec.service,
            t.slo.spec.environment,
            t.tenant.as_deref().map(|x| format!(" for tenant {x}")).unwrap_or_default(),
            t.alert,
            if burns.is_empty() { "none".to_owned() } else { burns.join(", ") }
        );
        metrics::counter!("runway_slo_alert_transitions_total", "state" => state, "severity" => t.severity.map_or("none", Severity::as_str))
            .increment(1);
        let payload = json!({
            "slo": t.slo.id, "service": t.slo.spec.service, "name": t.slo.spec.name, "environment": t.slo.spec.environment,
            "tenant": t.tenant, "alert": t.alert, "severity": t.severity, "state": state, "summary": summary,
            "sli": t.status.sli, "budget_remaining": t.status.budget.remaining, "burn_rates": t.status.burn_rates,
        });
        self.emit(kind, t.slo.id.as_str(), payload);
        if !t.slo.spec.alerting.alertmanager_urls.is_empty() {
            let body = alertmanager_payload(&t, state, &summary, &self.clock);
            for url in &t.slo.spec.alerting.alertmanager_urls {
                let ok = match self.http.post(url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => true,
                    Ok(r) => {
                        tracing::warn!(url, status = r.status().as_u16(), "Alertmanager receiver refused an SLO alert");
                        false
                    }
                    Err(e) => {
                        tracing::warn!(url, error = %e, "could not send an SLO alert to its Alertmanager receiver");
                        false
                    }
                };
                metrics::counter!("runway_slo_alertmanager_posts_total", "outcome" => if ok { "sent" } else { "failed" })
                    .increment(1);
            }
        }
        if t.severity == Some(Severity::Page) {
            let ctx = runway_audit::AuditContext::system(&format!("slo:{}", t.slo.id));
            let signal =
                GuardSignal { target: GuardTarget::Slo { slo: t.slo.id.clone() }, firing: t.firing, reason: summary };
            match self.flags.guard_signal(&ctx, signal).await {
                Ok(plans) if !plans.is_empty() => {
                    tracing::warn!(slo = %t.slo.id, plans = ?plans, "SLO page alert rolled back release plans")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(slo = %t.slo.id, error = %e.detail, "SLO page alert could not reach its guards")
                }
            }
        }
    }
}

async fn resolve(tx: &mut runway_store::Tx, id: &str, now: i64) -> Result<(), ApiError> {
    on_conn!(tx, c => sqlx::query("UPDATE slo_alerts SET resolved_at = $2 WHERE id = $1").bind(id).bind(now).execute(&mut *c).await.map(|_| ()))
        .map_err(store_err)
}

/// The Alertmanager webhook body (version 4) for one transition.
fn alertmanager_payload(t: &Transition, state: &str, summary: &str, clock: &Arc<dyn runway_core::Clock>) -> Value {
    let mut labels = serde_json::Map::new();
    for (k, v) in &t.slo.spec.labels {
        labels.insert(k.clone(), json!(v));
    }
    labels.insert(
        "alertname".into(),
        json!(format!("SLO{}", if t.severity == Some(Severity::Page) { "Page" } else { "Ticket" })),
    );
    labels.insert("slo".into(), json!(t.slo.id));
    labels.insert("slo_name".into(), json!(t.slo.spec.name));
    labels.insert("service".into(), json!(t.slo.spec.service));
    labels.insert("environment".into(), json!(t.slo.spec.environment));
    labels.insert("condition".into(), json!(t.alert));
    labels.insert("severity".into(), json!(t.severity.map_or("none", Severity::as_str)));
    if let Some(tenant) = &t.tenant {
        labels.insert("tenant".into(), json!(tenant));
    }
    let now = runway_core::clock::rfc3339(clock.now_micros());
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{slo=\"{}\"}}", t.slo.id),
        "truncatedAlerts": 0,
        "status": state,
        "receiver": "runway",
        "groupLabels": {"slo": t.slo.id},
        "commonLabels": labels,
        "commonAnnotations": {"summary": summary},
        "externalURL": "",
        "alerts": [{
            "status": state,
            "labels": labels,
            "annotations": {"summary": summary},
            "startsAt": if t.firing { now.clone() } else { String::new() },
            "endsAt": if t.firing { "0001-01-01T00:00:00Z".to_owned() } else { now },
            "generatorURL": "",
            "fingerprint": format!("{}:{}:{}", t.slo.id, t.tenant.as_deref().unwrap_or(""), t.alert),
        }],
    })
}

/// A series' status at minute `now`, from its sliding sums.
fn status_of(e: &Entry, s: &Series, now: i64, evaluated_at: &str, tenant: Option<String>) -> SloStatus {
    let spec = &e.slo.spec;
    let objective = spec.target();
    let comp = s.window(0);
    let burn_rates: Vec<BurnOut> = e
        .lengths
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            let c = s.window(i + 1);
            BurnOut { window: math::span(l), minutes: l, burn_rate: math::burn_rate(c, objective), total: c.total }
        })
        .collect();
    let mut alerts: Vec<AlertNow> = spec
        .alerting
        .windows
        .iter()
        .map(|w| {
            let state = math::burn_alert(
                s.window(e.index(w.long_minutes)),
                s.window(e.index(w.short_minutes)),
                objective,
                w.factor,
            );
            AlertNow { name: w.name(), severity: Some(w.severity), state }
        })
        .collect();
    if spec.alerting.alert_when_no_data {
        let longest = e.lengths.last().map_or(comp, |&l| s.window(e.index(l)));
        let state = if longest.is_empty() { AlertState::Firing } else { AlertState::Ok };
        alerts.push(AlertNow { name: "no-data".into(), severity: None, state });
    }
    let remaining = math::budget_remaining(comp, objective);
    let first_burn = spec
        .alerting
        .windows
        .first()
        .and_then(|w| math::burn_rate(s.window(e.index(w.long_minutes)), objective))
        .or_else(|| math::burn_rate(comp, objective));
    let window_secs = e.compliance.minutes(now) as f64 * 60.0;
    SloStatus {
        slo: e.slo.id.as_str().to_owned(),
        tenant,
        evaluated_at: evaluated_at.to_owned(),
        window_start: runway_core::clock::rfc3339(e.compliance.start(now) * 60_000_000),
        objective: spec.objective,
        good: comp.good,
        total: comp.total,
        sli: math::sli(comp),
        budget: BudgetOut { allowed: comp.total * (1.0 - objective), spent: comp.bad(), remaining },
        burn_rates,
        alerts,
        time_to_exhaustion_secs: remaining
            .zip(first_burn)
            .and_then(|(r, b)| math::time_to_exhaustion(r, b, window_secs)),
    }
}

/// The stored statuses of some SLOs: (slo id, tenant) → status.
pub async fn statuses(svc: &Service, ids: &[SloId]) -> Result<HashMap<String, Vec<SloStatus>>, ApiError> {
    let mut out: HashMap<String, Vec<SloStatus>> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let params: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT slo_id, status FROM slo_status WHERE slo_id IN ({}) ORDER BY slo_id, tenant_id",
        params.join(", ")
    );
    let mut tx = svc.store.read(DbScope::Platform).await?;
    let rows: Vec<(String, String)> = on_conn!(&mut tx, c => {
        let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()));
        for id in ids {
            q = q.bind(id.as_str());
        }
        q.fetch_all(&mut *c).await
    })
    .map_err(store_err)?;
    for (id, text) in rows {
        let s: SloStatus = runway_store::stored_json("SLO status", &text).map_err(ApiError::from)?;
        out.entry(id).or_default().push(s);
    }
    Ok(out)
}

/// An alert from open to resolved.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SloAlert {
    /// The alert's ID.
    #[schema(value_type = String)]
    pub id: SloAlertId,
    /// The tenant, for per-tenant SLOs.
    pub tenant: Option<String>,
    /// The condition: `page-1h-5m`, `ticket-3d-6h`, `no-data`, …
    pub alert: String,
    /// `page`, `ticket` or `none`.
    pub severity: String,
    /// `firing` or `resolved`.
    pub state: String,
    /// When it opened (RFC 3339).
    pub opened_at: String,
    /// When it resolved (RFC 3339).
    pub resolved_at: Option<String>,
    /// The SLO's status when it opened.
    #[schema(value_type = Object)]
    pub details: Value,
}

/// id, tenant_id, alert, severity, opened_at, resolved_at, details.
type AlertRow = (String, String, String, String, i64, Option<i64>, String);

/// An SLO's alerts, newest first (at most `limit`).
pub async fn alerts(svc: &Service, id: &SloId, limit: i64) -> Result<Vec<SloAlert>, ApiError> {
    let mut tx = svc.store.read(DbScope::Platform).await?;
    let rows: Vec<AlertRow> = on_conn!(&mut tx, c => sqlx::query_as(
        "SELECT id, tenant_id, alert, severity, opened_at, resolved_at, details FROM slo_alerts WHERE slo_id = $1 ORDER BY opened_at DESC, id DESC LIMIT $2")
        .bind(id.as_str()).bind(limit).fetch_all(&mut *c).await)
    .map_err(store_err)?;
    rows.into_iter()
        .map(|(aid, tenant, alert, severity, opened, resolved, details)| {
            Ok(SloAlert {
                id: SloAlertId::from_trusted(aid),
                tenant: (!tenant.is_empty()).then_some(tenant),
                alert,
                severity,
                state: if resolved.is_some() { "resolved" } else { "firing" }.into(),
                opened_at: runway_core::clock::rfc3339(opened),
                resolved_at: resolved.map(runway_core::clock::rfc3339),
                details: runway_store::stored_json("SLO alert details", &details).map_err(ApiError::from)?,
            })
        })
        .collect()
}
