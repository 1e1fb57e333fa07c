//! Scheduled flag changes: stored with the time they apply, applied by whichever replica's
//! scheduler claims them first, in the same transaction as the flag change.

use runway_audit::AuditContext;
use runway_core::id::ScheduleId;
use runway_core::{ApiError, ErrorCode};
use runway_store::{DbScope, on_conn};
use serde::{Deserialize, Serialize};

use crate::model::EnvConfig;
use crate::{Flags, store_err};

/// What a scheduled change does to one environment of a flag.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduledChange {
    /// The environment the change applies to.
    pub environment: String,
    /// Turn the flag on or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Replace the environment's whole configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<EnvConfig>,
}

impl ScheduledChange {
    fn apply(&self, doc: &mut crate::model::FlagDocument) {
        let cfg = doc.environments.entry(self.environment.clone()).or_default();
        if let Some(c) = &self.config {
            *cfg = c.clone();
        }
        if let Some(e) = self.enabled {
            cfg.enabled = e;
        }
    }
}

/// A scheduled change as stored.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Schedule {
    /// The schedule's ID.
    pub id: ScheduleId,
    /// The flag it changes.
    pub flag: String,
    /// What it does.
    pub change: ScheduledChange,
    /// When it applies (RFC 3339).
    pub apply_at: String,
    /// `pending`, `applied`, `failed` or `cancelled`.
    pub status: String,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Who scheduled it (`<kind>:<id>`).
    pub created_by: String,
    /// When it was applied (RFC 3339).
    pub applied_at: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    flag_key: String,
    change: String,
    apply_at: i64,
    status: String,
    error: Option<String>,
    created_by: String,
    applied_at: Option<i64>,
}

impl TryFrom<Row> for Schedule {
    type Error = ApiError;
    fn try_from(r: Row) -> Result<Self, ApiError> {
        Ok(Schedule {
            id: ScheduleId::from_trusted(r.id),
            flag: r.flag_key,
            change: serde_json::from_str(&r.change).map_err(ApiError::internal)?,
            apply_at: runway_core::clock::rfc3339(r.apply_at),
            status: r.status,
            error: r.error,
            created_by: r.created_by,
            applied_at: r.applied_at.map(runway_core::clock::rfc3339),
        })
    }
}

const COLUMNS: &str = "id, flag_key, change, apply_at, status, error, created_by, applied_at";

impl Flags {
    /// Schedules a change; it is validated now against the flag as it is, and again when applied.
    pub async fn schedule(
        &self,
        ctx: &AuditContext,
        key: &str,
        change: ScheduledChange,
        apply_at: i64,
    ) -> Result<Schedule, ApiError> {
        if change.enabled.is_none() && change.config.is_none() {
            return Err(ApiError::validation("enabled", "a scheduled change sets `enabled`, `config` or both"));
        }
        let current = self.get(key).await?;
        let mut preview = current.document.clone();
        change.apply(&mut preview);
        if !self.snapshot().environments.contains(&change.environment) {
            return Err(ApiError::validation("environment", format!("no environment `{}`", change.environment)));
        }
        let mut tx = self.store.write(DbScope::Platform).await?;
        let known = crate::KnownOwned::load(&mut tx, &preview).await?;
        preview.validate_change(Some(&current.document), &known.as_known())?;
        let id = ScheduleId::generate();
        let now = self.clock.now_micros();
        let text = serde_json::to_string(&change).map_err(ApiError::internal)?;
        let actor = format!("{}:{}", ctx.actor_kind.as_str(), ctx.actor_id);
        on_conn!(&mut tx, c => sqlx::query("INSERT INTO flag_schedules (id, flag_key, environment, change, apply_at, status, created_by, created_at) VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7)")
            .bind(id.as_str()).bind(key).bind(&change.environment).bind(&text).bind(apply_at).bind(&actor).bind(now)
            .execute(&mut *c).await.map(|_| ()))
        .map_err(store_err)?;
        runway_audit::append(&mut tx, &*self.clock, ctx, &runway_audit::Chain::Platform, runway_audit::Change {
            action: "flag.change_scheduled",
            target_kind: "flag",
            target_id: key,
            summary: serde_json::json!({"schedule": id.as_str(), "apply_at": runway_core::clock::rfc3339(apply_at), "change": change}),
        })
        .await?;
        tx.commit().await?;
        Ok(Schedule {
            id,
            flag: key.to_owned(),
            change,
            apply_at: runway_core::clock::rfc3339(apply_at),
            status: "pending".into(),
            error: None,
            created_by: actor,
            applied_at: None,
        })
    }

    pub async fn schedules(&self, key: &str) -> Result<Vec<Schedule>, ApiError> {
        let mut tx = self.store.read(DbScope::Platform).await?;
        let rows: Vec<Row> = on_conn!(&mut tx, c => sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM flag_schedules WHERE flag_key = $1 ORDER BY apply_at, id")))
            .bind(key).fetch_all(&mut *c).await)
        .map_err(store_err)?;
        rows.into_iter().map(Schedule::try_from).collect()
    }

    pub async fn cancel_schedule(&self, ctx: &AuditContext, key: &str, id: &ScheduleId) -> Result<(), ApiError> {
        let mut tx = self.store.write(DbScope::Platform).await?;
        let n = on_conn!(&mut tx, c => sqlx::query("UPDATE flag_schedules SET status = 'cancelled' WHERE id = $1 AND flag_key = $2 AND status = 'pending'")
            .bind(id.as_str()).bind(key).execute(&mut *c).await.map(|r| r.rows_affected()))
        .map_err(store_err)?;
        if n == 0 {
            return Err(ApiError::new(ErrorCode::Conflict, "no pending scheduled change with that id for this flag"));
        }
        runway_audit::append(
            &mut tx,
            &*self.clock,
            ctx,
            &runway_audit::Chain::Platform,
            runway_audit::Change {
                action: "flag.schedule_cancelled",
                target_kind: "flag",
                target_id: key,
                summary: serde_json::json!({"schedule": id.as_str()}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Applies every due scheduled change; each is claimed and applied in one transaction, so
    /// two replicas never apply the same change and a crash leaves it pending.
    pub async fn apply_due_schedules(&self) -> Result<usize, ApiError> {
        let now = self.clock.now_micros();
        let due: Vec<Row> = {
            let mut tx = self.store.read(DbScope::Platform).await?;
            on_conn!(&mut tx, c => sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM flag_schedules WHERE status = 'pending' AND apply_at <= $1 ORDER BY apply_at, id LIMIT 100")))
                .bind(now).fetch_all(&mut *c).await)
            .map_err(store_err)?
        };
        let mut applied = 0;
        for row in due {
            let s = Schedule::try_from(row)?;
            let ctx = AuditContext::system("flag-scheduler");
            let mut tx = self.store.write(DbScope::Platform).await?;
            let claimed = on_conn!(&mut tx, c => sqlx::query("UPDATE flag_schedules SET status = 'applied', applied_at = $2 WHERE id = $1 AND status = 'pending'")
                .bind(s.id.as_str()).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))
            .map_err(store_err)?;
            if claimed == 0 {
                continue;
            }
            let change = s.change.clone();
            match self
                .change_in(&mut tx, &ctx, &s.flag, "scheduled_change_applied", move |doc| {
                    change.apply(doc);
                    Ok(())
                })
                .await
            {
                Ok(_) => {
                    tx.commit().await?;
                    applied += 1;
                }
                Err(e) => {
                    drop(tx);
                    tracing::warn!(schedule = s.id.as_str(), error = %e.detail, "scheduled flag change failed");
                    let mut tx = self.store.write(DbScope::Platform).await?;
                    on_conn!(&mut tx, c => sqlx::query("UPDATE flag_schedules SET status = 'failed', error = $2, applied_at = $3 WHERE id = $1 AND status = 'pending'")
                        .bind(s.id.as_str()).bind(&e.detail).bind(now).execute(&mut *c).await.map(|_| ()))
                    .map_err(store_err)?;
                    tx.commit().await?;
                }
            }
        }
        if applied > 0 {
            self.reload().await?;
        }
        Ok(applied)
    }

    /// Applies due schedules and moves release plans along until stopped.
    pub async fn run_scheduler(self: std::sync::Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let me = &self;
        crate::every(std::time::Duration::from_millis(self.config.scheduler_interval_ms), stop, || async move {
            if let Err(e) = me.apply_due_schedules().await {
                tracing::warn!(error = %e.detail, "could not apply scheduled flag changes");
            }
            if let Err(e) = me.advance_due_plans().await {
                tracing::warn!(error = %e.detail, "could not advance release plans");
            }
        })
        .await;
    }
}
