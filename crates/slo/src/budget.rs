//! An SLO's budget over time, for charts: at each step, the SLI, the budget left and the burn
//! rate over the step, each over the compliance window ending there. Computed from the stored
//! minutes (gateway records or pushed counts) with prefix sums, one read per request.

use std::collections::{BTreeMap, HashMap};

use runway_core::id::SloId;
use runway_core::{ApiError, ErrorCode};
use runway_store::{DbScope, StoreError, on_conn};
use serde::{Deserialize, Serialize};

use crate::Service;
use crate::eval::gateway_counts;
use crate::math::{self, Counts};
use crate::model::SliSpec;

/// Most points in one series.
pub const MAX_POINTS: i64 = 1440;
/// The longest range one request may ask for, in days.
pub const MAX_RANGE_DAYS: i64 = 90;

/// One point of the series.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BudgetPoint {
    /// The end of the compliance window this point describes (RFC 3339).
    pub at: String,
    /// Good over all in the window ending here; absent without events.
    pub sli: Option<f64>,
    /// The budget left (1 untouched, 0 spent, below 0 overspent); absent without events.
    pub budget_remaining: Option<f64>,
    /// The burn rate over the step before this point; absent without events in it.
    pub burn_rate: Option<f64>,
    /// Events in the window ending here.
    pub total: f64,
}

/// The series.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BudgetSeries {
    /// The SLO's ID.
    #[schema(value_type = String)]
    pub slo: SloId,
    /// The tenant, for a per-tenant SLO asked about one tenant.
    pub tenant: Option<String>,
    /// The objective in percent.
    pub objective: f64,
    /// Seconds between points.
    pub step: i64,
    /// Oldest first.
    pub points: Vec<BudgetPoint>,
}

impl Service {
    /// The budget of an SLO (one tenant's, or all together) at each `step` seconds from `from`
    /// to `to` (unix seconds).
    pub async fn budget(
        &self,
        id: &SloId,
        tenant: Option<&str>,
        from: i64,
        to: i64,
        step: i64,
    ) -> Result<BudgetSeries, ApiError> {
        let slo = self.get(id).await?.doc;
        let spec = &slo.spec;
        if tenant.is_some() && !spec.per_tenant {
            return Err(ApiError::query("tenant", "this SLO is not per tenant"));
        }
        if step < 60 || step % 60 != 0 {
            return Err(ApiError::query("step", "whole minutes, at least 60 seconds"));
        }
        if to <= from || to - from > MAX_RANGE_DAYS * 86_400 {
            return Err(ApiError::query("to", format!("after `from`, at most {MAX_RANGE_DAYS} days later")));
        }
        if (to - from) / step > MAX_POINTS {
            return Err(ApiError::query(
                "step",
                format!("more than {MAX_POINTS} points; widen the step or narrow the range"),
            ));
        }
        let compliance = spec.compliance()?;
        let (first, last) = (from.div_euclid(60), to.div_euclid(60));
        let start = compliance.start(first).min(first - step / 60);
        let plans: HashMap<String, String> = match &spec.sli {
            SliSpec::Availability(g) | SliSpec::Latency(g) if g.plan.is_some() => {
                self.identity.tenant_plans().await?.into_iter().map(|(t, p)| (t.as_str().to_owned(), p)).collect()
            }
            _ => HashMap::new(),
        };
        let mut raw: BTreeMap<i64, Counts> = BTreeMap::new();
        match &spec.sli {
            SliSpec::Availability(g) | SliSpec::Latency(g) => {
                let thresholds = crate::eval::thresholds(std::iter::once(spec));
                let rows =
                    runway_gateway::records::minute_counts(&self.store, &g.routes, start * 60, last * 60, &thresholds)
                        .await?;
                for (key, rec) in rows {
                    if let Some((series, c)) = gateway_counts(spec, &key.route, &key.tenant, &rec, &thresholds, &plans)
                        && tenant.is_none_or(|t| t == series)
                    {
                        raw.entry(key.minute.div_euclid(60)).or_default().add(c);
                    }
                }
            }
            SliSpec::Pushed(_) => {
                let mut tx = self.store.read(DbScope::Platform).await?;
                let rows: Vec<(String, i64, i64, i64)> = on_conn!(&mut tx, c => sqlx::query_as(
                    "SELECT tenant_id, minute, CAST(SUM(good) AS BIGINT), CAST(SUM(total) AS BIGINT) FROM slo_observations
                     WHERE slo_id = $1 AND minute >= $2 AND minute <= $3 GROUP BY tenant_id, minute")
                    .bind(id.as_str()).bind(start * 60).bind(last * 60).fetch_all(&mut *c).await)
                .map_err(|e| ApiError::from(StoreError::from(e)))?;
                for (t, minute, good, total) in rows {
                    if tenant.is_none_or(|x| x == t) {
                        raw.entry(minute.div_euclid(60)).or_default().add(Counts::new(good as f64, total as f64));
                    }
                }
            }
        }
        let method = spec.budgeting_method;
        let target = spec.timeslice_target.unwrap_or(100.0) / 100.0;
        // Prefix sums: prefix[i] = sum of minutes start ..< start + i.
        let len =
            usize::try_from(last - start + 1).map_err(|_| ApiError::new(ErrorCode::ValidationFailed, "empty range"))?;
        let mut prefix = vec![Counts::default(); len + 1];
        for i in 0..len {
            let m = start + i as i64;
            let mut c = prefix[i];
            if let Some(v) = raw.get(&m) {
                c.add(math::slice(*v, method, target));
            }
            prefix[i + 1] = c;
        }
        let sum = |a: i64, b: i64| {
            let (a, b) = ((a.max(start) - start) as usize, (b.min(last) - start + 1) as usize);
            let mut c = prefix[b.max(a)];
            c.sub(prefix[a]);
            c
        };
        let objective = spec.target();
        let mut points = Vec::new();
        let mut at = first;
        while at <= last {
            let window = sum(compliance.start(at), at);
            let recent = sum(at - step / 60 + 1, at);
            points.push(BudgetPoint {
                at: runway_core::clock::rfc3339(at * 60_000_000),
                sli: math::sli(window),
                budget_remaining: math::budget_remaining(window, objective),
                burn_rate: math::burn_rate(recent, objective),
                total: window.total,
            });
            at += step / 60;
        }
        Ok(BudgetSeries { slo: id.clone(), tenant: tenant.map(str::to_owned), objective: spec.objective, step, points })
    }
}
