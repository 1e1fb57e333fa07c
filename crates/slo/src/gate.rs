//! The release gate: whether a service may ship to an environment now, from its SLOs' last
//! evaluation. The policy is a plain function (after Google's example error-budget policy);
//! overrides (actor, reason, expiry) are stored and audited.

use runway_audit::{AuditContext, Chain, Change};
use runway_core::id::GateOverrideId;
use runway_core::{ApiError, Clock};
use runway_store::{DbScope, Store, StoreError, on_conn};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::eval::SloStatus;
use crate::math::{AlertState, Severity};
use crate::model::SloSpec;

/// The gate's answer, worst last: the order is used to combine SLOs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Warn,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Warn => "warn",
            Decision::Deny => "deny",
        }
    }
}

/// One SLO's (or one tenant's, for per-tenant SLOs) verdict and why.
///
/// Deny when a key SLO's budget is spent or one of its page alerts fires; warn on the same for
/// an SLO that is not key, on a ticket alert, below `warn_below_budget` of the budget, or
/// without data; allow otherwise.
pub fn judge(spec: &SloSpec, status: Option<&SloStatus>) -> (Decision, Vec<String>) {
    let who = |s: &SloStatus| match &s.tenant {
        Some(t) => format!("SLO `{}` for tenant {t}", spec.name),
        None => format!("SLO `{}`", spec.name),
    };
    let Some(s) = status else {
        return (Decision::Warn, vec![format!("SLO `{}` has not been evaluated yet", spec.name)]);
    };
    let severe = if spec.key { Decision::Deny } else { Decision::Warn };
    let mut decision = Decision::Allow;
    let mut reasons = Vec::new();
    let mut raise = |d: Decision, why: String, decision: &mut Decision| {
        *decision = (*decision).max(d);
        reasons.push(why);
    };
    match s.budget.remaining {
        None => raise(Decision::Warn, format!("{} has no data in its window", who(s)), &mut decision),
        Some(r) if r <= 0.0 => {
            raise(severe, format!("{} has spent its error budget ({:.1} % left)", who(s), r * 100.0), &mut decision)
        }
        Some(r) if r < spec.alerting.warn_below_budget => raise(
            Decision::Warn,
            format!(
                "{} has {:.1} % of its error budget left (warns below {:.0} %)",
                who(s),
                r * 100.0,
                spec.alerting.warn_below_budget * 100.0
            ),
            &mut decision,
        ),
        Some(_) => {}
    }
    for a in s.alerts.iter().filter(|a| a.state == AlertState::Firing) {
        let d = if a.severity == Some(Severity::Page) { severe } else { Decision::Warn };
        raise(d, format!("{} fires `{}`", who(s), a.name), &mut decision);
    }
    (decision, reasons)
}

/// An audited exception to the gate's answer for one service and environment.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GateOverride {
    /// The override's ID.
    #[schema(value_type = String)]
    pub id: GateOverrideId,
    /// The service it is for.
    pub service: String,
    /// The environment it is for.
    pub environment: String,
    /// The answer the gate gives while the override holds.
    pub decision: Decision,
    /// Why, in words; shown in every answer it changes.
    pub reason: String,
    /// Who made it (`<kind>:<id>`).
    pub actor: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// When it stops holding (RFC 3339).
    pub expires_at: String,
    /// When it was revoked (RFC 3339), if it was.
    pub revoked_at: Option<String>,
}

/// An override as requested.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideCreate {
    /// The service whose releases it is about.
    #[schema(example = "checkout")]
    pub service: String,
    /// The environment.
    #[schema(example = "production")]
    pub environment: String,
    /// The answer to give instead.
    pub decision: Decision,
    /// Why (required: it is what the audit log and every changed answer show).
    #[schema(example = "hotfix for INC-142 approved by the on-call lead")]
    pub reason: String,
    /// How long it holds, in seconds (at most 7 days).
    #[schema(example = 3600)]
    pub expires_in_secs: u64,
}

/// The longest an override may hold.
pub const MAX_OVERRIDE_SECS: u64 = 7 * 86_400;

type OverrideRow = (String, String, String, String, String, String, i64, i64, Option<i64>);

fn row_to(r: OverrideRow) -> Result<GateOverride, ApiError> {
    let decision = match r.3.as_str() {
        "allow" => Decision::Allow,
        "warn" => Decision::Warn,
        "deny" => Decision::Deny,
        other => return Err(ApiError::internal(format!("a stored override has decision `{other}`"))),
    };
    Ok(GateOverride {
        id: GateOverrideId::from_trusted(r.0),
        service: r.1,
        environment: r.2,
        decision,
        reason: r.4,
        actor: r.5,
        created_at: runway_core::clock::rfc3339(r.6),
        expires_at: runway_core::clock::rfc3339(r.7),
        revoked_at: r.8.map(runway_core::clock::rfc3339),
    })
}

const OVERRIDE_COLUMNS: &str = "id, service, environment, decision, reason, actor, created_at, expires_at, revoked_at";

/// Records an override, audited.
pub async fn create_override(
    store: &Store,
    clock: &dyn Clock,
    ctx: &AuditContext,
    o: &OverrideCreate,
) -> Result<GateOverride, ApiError> {
    if o.reason.trim().is_empty() || o.reason.len() > 500 {
        return Err(ApiError::validation("/reason", "say why, in 1 to 500 characters"));
    }
    if o.service.is_empty() || o.service.len() > 100 {
        return Err(ApiError::validation("/service", "1 to 100 characters"));
    }
    if o.environment.is_empty() || o.environment.len() > 100 {
        return Err(ApiError::validation("/environment", "1 to 100 characters"));
    }
    if o.expires_in_secs == 0 || o.expires_in_secs > MAX_OVERRIDE_SECS {
        return Err(ApiError::validation("/expires_in_secs", "1 second to 7 days"));
    }
    let now = clock.now_micros();
    let id = GateOverrideId::generate();
    let expires = now + o.expires_in_secs as i64 * 1_000_000;
    let actor = format!("{}:{}", ctx.actor_kind.as_str(), ctx.actor_id);
    let mut tx = store.write(DbScope::Platform).await?;
    on_conn!(&mut tx, c => sqlx::query(sqlx::AssertSqlSafe(format!("INSERT INTO slo_gate_overrides ({OVERRIDE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)")))
        .bind(id.as_str()).bind(&o.service).bind(&o.environment).bind(o.decision.as_str()).bind(&o.reason).bind(&actor).bind(now).bind(expires)
        .execute(&mut *c).await.map(|_| ()))
    .map_err(|e| ApiError::from(StoreError::from(e)))?;
    runway_audit::append(
        &mut tx,
        clock,
        ctx,
        &Chain::Platform,
        Change {
            action: "release_gate.override.created",
            target_kind: "release_gate_override",
            target_id: id.as_str(),
            summary: json!({"service": o.service, "environment": o.environment, "decision": o.decision, "reason": o.reason, "expires_at": runway_core::clock::rfc3339(expires)}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(GateOverride {
        id,
        service: o.service.clone(),
        environment: o.environment.clone(),
        decision: o.decision,
        reason: o.reason.clone(),
        actor,
        created_at: runway_core::clock::rfc3339(now),
        expires_at: runway_core::clock::rfc3339(expires),
        revoked_at: None,
    })
}

/// Revokes an override, audited; 404 when it does not exist or was revoked already.
pub async fn revoke_override(
    store: &Store,
    clock: &dyn Clock,
    ctx: &AuditContext,
    id: &GateOverrideId,
) -> Result<(), ApiError> {
    let now = clock.now_micros();
    let mut tx = store.write(DbScope::Platform).await?;
    let n = on_conn!(&mut tx, c => sqlx::query("UPDATE slo_gate_overrides SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
        .bind(id.as_str()).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))
    .map_err(|e| ApiError::from(StoreError::from(e)))?;
    if n == 0 {
        return Err(ApiError::not_found("no such override in force"));
    }
    runway_audit::append(
        &mut tx,
        clock,
        ctx,
        &Chain::Platform,
        Change {
            action: "release_gate.override.revoked",
            target_kind: "release_gate_override",
            target_id: id.as_str(),
            summary: json!({}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The newest override in force for a service and environment, if any.
pub async fn active_override(
    store: &Store,
    now: i64,
    service: &str,
    environment: &str,
) -> Result<Option<GateOverride>, ApiError> {
    let mut tx = store.read(DbScope::Platform).await?;
    let row: Option<OverrideRow> = on_conn!(&mut tx, c => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {OVERRIDE_COLUMNS} FROM slo_gate_overrides WHERE service = $1 AND environment = $2 AND revoked_at IS NULL AND expires_at > $3 ORDER BY created_at DESC LIMIT 1")))
        .bind(service).bind(environment).bind(now).fetch_optional(&mut *c).await)
    .map_err(|e| ApiError::from(StoreError::from(e)))?;
    row.map(row_to).transpose()
}

/// Overrides of a service and environment, newest first (at most 100).
pub async fn overrides(store: &Store, service: &str, environment: &str) -> Result<Vec<GateOverride>, ApiError> {
    let mut tx = store.read(DbScope::Platform).await?;
    let rows: Vec<OverrideRow> = on_conn!(&mut tx, c => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {OVERRIDE_COLUMNS} FROM slo_gate_overrides WHERE service = $1 AND environment = $2 ORDER BY created_at DESC LIMIT 100")))
        .bind(service).bind(environment).fetch_all(&mut *c).await)
    .map_err(|e| ApiError::from(StoreError::from(e)))?;
    rows.into_iter().map(row_to).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{AlertNow, BudgetOut};
    use serde_json::json;

    fn spec(key: bool) -> SloSpec {
        let mut s: SloSpec = serde_json::from_value(json!({"service": "checkout", "name": "avail", "objective": 99.9,
            "window": {"rolling": "28d"}, "sli": {"pushed": {}}}))
        .unwrap();
        s.key = key;
        s
    }

    fn status(remaining: Option<f64>, firing: &[(&str, Severity)]) -> SloStatus {
        SloStatus {
            budget: BudgetOut { remaining, ..Default::default() },
            alerts: firing
                .iter()
                .map(|(n, s)| AlertNow { name: (*n).into(), severity: Some(*s), state: AlertState::Firing })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn googles_example_policy() {
        let key = spec(true);
        assert_eq!(judge(&key, Some(&status(Some(0.8), &[]))).0, Decision::Allow);
        assert_eq!(judge(&key, Some(&status(Some(0.1), &[]))).0, Decision::Warn);
        assert_eq!(judge(&key, Some(&status(Some(0.0), &[]))).0, Decision::Deny);
        assert_eq!(judge(&key, Some(&status(Some(0.9), &[("page-1h-5m", Severity::Page)]))).0, Decision::Deny);
        assert_eq!(judge(&key, Some(&status(Some(0.9), &[("ticket-1d-2h", Severity::Ticket)]))).0, Decision::Warn);
        assert_eq!(judge(&key, Some(&status(None, &[]))).0, Decision::Warn);
        assert_eq!(judge(&key, None).0, Decision::Warn);
        // An SLO that is not key only warns, whatever burns.
        let minor = spec(false);
        assert_eq!(judge(&minor, Some(&status(Some(-0.5), &[("page-1h-5m", Severity::Page)]))).0, Decision::Warn);
        let (_, why) = judge(&key, Some(&status(Some(0.0), &[("page-1h-5m", Severity::Page)])));
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(why[0].contains("spent its error budget"), "{why:?}");
        assert!(why[1].contains("page-1h-5m"), "{why:?}");
    }

    #[test]
    fn decisions_order_from_allow_to_deny() {
        assert!(Decision::Allow < Decision::Warn && Decision::Warn < Decision::Deny);
    }
}
