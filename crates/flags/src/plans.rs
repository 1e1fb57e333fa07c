//! Release plans: a flag taken through rollout milestones on a schedule or by hand, watched by
//! guards. A tripped guard stops the plan and puts the flag back at the last milestone that
//! passed its watch, with an audit entry and an operational event.

use runway_audit::{AuditContext, Chain, Change};
use runway_core::id::{GuardId, ReleasePlanId, SloId};
use runway_core::{ApiError, ErrorCode};
use runway_flags_engine::wire::StrategyDef;
use runway_store::{DbScope, Tx, on_conn};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::model::FlagDocument;
use crate::{Flags, store_err};

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Milestone {
    /// A name for the step, shown in the plan and its audit entries.
    #[serde(default)]
    #[schema(example = "canary")]
    pub name: String,
    /// Percentage of users on, 0 to 100.
    pub rollout: u32,
    /// Move on by itself after this long without a guard tripping; absent = by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_secs: Option<u64>,
}

/// A guard as requested when creating a plan.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardSpec {
    /// The guard's name, unique in the plan; `PUT …/guards/{name}` sets its state.
    #[schema(example = "checkout-errors")]
    pub name: String,
    /// Alertmanager `alertname` that trips this guard when it fires.
    #[serde(default)]
    pub alertname: Option<String>,
    /// An SLO (its ID) whose page alerts trip this guard, with no Prometheus in between.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "slo_01JD8X3R6Q9V2M4T7W1Y5ZB0CE")]
    pub slo: Option<SloId>,
}

/// A guard and its state.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Guard {
    /// The guard's ID.
    pub id: GuardId,
    /// The guard's name in its plan.
    pub name: String,
    /// The Alertmanager `alertname` that trips it, if any.
    pub alertname: Option<String>,
    /// The SLO whose page alerts trip it, if any.
    #[schema(value_type = Option<String>)]
    pub slo: Option<SloId>,
    /// `ok` or `tripped`.
    pub state: String,
    /// Why it was last set.
    pub reason: Option<String>,
    /// When its state last changed (RFC 3339).
    pub updated_at: String,
}

/// A release plan.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReleasePlan {
    /// The plan's ID.
    pub id: ReleasePlanId,
    /// The flag it rolls out.
    pub flag: String,
    /// The environment it rolls out in.
    pub environment: String,
    /// Index of the flexibleRollout strategy the plan drives.
    pub strategy: usize,
    /// The steps, in order.
    pub milestones: Vec<Milestone>,
    /// Index of the milestone in effect.
    pub current: i64,
    /// Index of the last milestone that passed its watch; -1 when none has.
    pub last_safe: i64,
    /// `active`, `paused`, `completed`, `rolled_back` or `cancelled`.
    pub status: String,
    /// When the plan moves on by itself next (RFC 3339), while active and waiting.
    pub next_at: Option<String>,
    /// Why the plan last stopped or rolled back.
    pub reason: Option<String>,
    /// What watches the rollout.
    pub guards: Vec<Guard>,
    /// Who started the plan (`<kind>:<id>`).
    pub created_by: String,
    /// When it started (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
}

/// A signal for guards: the Alertmanager webhook, the guard API, and later the SLO capability.
#[derive(Debug, Clone)]
pub struct GuardSignal {
    /// Which guards: by name on one plan, or by alert name across active plans.
    pub target: GuardTarget,
    pub firing: bool,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub enum GuardTarget {
    Named {
        plan: ReleasePlanId,
        guard: String,
    },
    Alert {
        alertname: String,
        flag: Option<String>,
        environment: Option<String>,
    },
    /// Guards watching an SLO's page alerts, across active plans.
    Slo {
        slo: SloId,
    },
}

/// What feeds guards. The SLO capability implements its burn-rate alerts against this.
pub trait GuardSink: Send + Sync {
    fn signal(
        &self,
        signal: GuardSignal,
    ) -> impl std::future::Future<Output = Result<Vec<ReleasePlanId>, ApiError>> + Send;
}

impl GuardSink for Flags {
    /// An automatic signal (an SLO's burn-rate alert): the audit actor is the system.
    async fn signal(&self, signal: GuardSignal) -> Result<Vec<ReleasePlanId>, ApiError> {
        self.guard_signal(&AuditContext::system("release-guard"), signal).await
    }
}

// ---- pure plan logic ----

/// Where a plan goes when it moves on from `current`: the next index, what is now safe, and
/// whether it is finished.
pub fn next_step(milestones: &[Milestone], current: i64) -> (i64, i64, bool) {
    let next = current + 1;
    let last = milestones.len() as i64 - 1;
    if next > last {
        return (current, current, true);
    }
    // Reaching the last milestone finishes the plan unless it has its own watch period.
    let done = next == last && milestones[next as usize].wait_secs.is_none();
    (next, if done { next } else { current }, done)
}

/// The rollout a plan falls back to when a guard trips.
pub fn safe_rollout(milestones: &[Milestone], last_safe: i64) -> u32 {
    if last_safe < 0 { 0 } else { milestones[last_safe as usize].rollout }
}

/// The longest a milestone may wait: a year.
const MAX_WAIT_SECS: u64 = 366 * 86_400;

fn validate_milestones(m: &[Milestone]) -> Result<(), ApiError> {
    if m.is_empty() || m.len() > 50 {
        return Err(ApiError::validation("milestones", "a plan has 1 to 50 milestones"));
    }
    for (i, x) in m.iter().enumerate() {
        if x.rollout > 100 {
            return Err(ApiError::validation(format!("milestones/{i}/rollout"), "must be 0 to 100"));
        }
        if x.wait_secs.is_some_and(|w| w > MAX_WAIT_SECS) {
            return Err(ApiError::validation(format!("milestones/{i}/wait_secs"), "must be at most a year"));
        }
        if i > 0 && x.rollout < m[i - 1].rollout {
            return Err(ApiError::validation(format!("milestones/{i}/rollout"), "milestones only go up"));
        }
    }
    Ok(())
}

/// Sets the plan's strategy to `rollout` percent. Only starting a plan turns the environment on:
/// a flag killed during a plan stays off when the plan moves on or rolls back.
fn set_rollout(
    doc: &mut FlagDocument,
    env: &str,
    strategy: usize,
    rollout: u32,
    turn_on: bool,
) -> Result<(), ApiError> {
    let cfg = doc.environments.entry(env.to_owned()).or_default();
    let s = cfg
        .strategies
        .get_mut(strategy)
        .ok_or_else(|| ApiError::new(ErrorCode::Conflict, "the plan's strategy no longer exists on the flag"))?;
    if s.name != "flexibleRollout" {
        return Err(ApiError::new(ErrorCode::Conflict, "the plan's strategy is no longer a flexibleRollout"));
    }
    s.parameters.get_or_insert_with(Default::default).insert("rollout".into(), json!(rollout.to_string()));
    if turn_on {
        cfg.enabled = true;
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct PlanRow {
    id: String,
    flag_key: String,
    environment: String,
    strategy: i64,
    milestones: String,
    current: i64,
    last_safe: i64,
    status: String,
    next_at: Option<i64>,
    reason: Option<String>,
    created_by: String,
    created_at: i64,
    updated_at: i64,
}

/// id, name, alertname, slo_id, state, reason, updated_at.
type GuardRow = (String, String, Option<String>, Option<String>, String, Option<String>, i64);

const PLAN_COLUMNS: &str = "id, flag_key, environment, strategy, milestones, current, last_safe, status, next_at, reason, created_by, created_at, updated_at";

/// Reads a plan. With `for_update` (write transactions) the row is locked on PostgreSQL, so a
/// guard trip, an advance and a pause cannot interleave and undo one another.
async fn load_plan(tx: &mut Tx, id: &str, for_update: bool) -> Result<Option<ReleasePlan>, ApiError> {
    let lock = if for_update && tx.engine() == runway_store::Engine::Postgres { " FOR UPDATE" } else { "" };
    let row: Option<PlanRow> = on_conn!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {PLAN_COLUMNS} FROM flag_release_plans WHERE id = $1{lock}")))
        .bind(id).fetch_optional(&mut *c).await)
    .map_err(store_err)?;
    let Some(r) = row else { return Ok(None) };
    let guards: Vec<GuardRow> = on_conn!(tx, c => sqlx::query_as(
        "SELECT id, name, alertname, slo_id, state, reason, updated_at FROM flag_guards WHERE plan_id = $1 ORDER BY name")
        .bind(id).fetch_all(&mut *c).await)
    .map_err(store_err)?;
    Ok(Some(ReleasePlan {
        id: ReleasePlanId::from_trusted(r.id),
        flag: r.flag_key,
        environment: r.environment,
        strategy: r.strategy as usize,
        milestones: serde_json::from_str(&r.milestones).map_err(ApiError::internal)?,
        current: r.current,
        last_safe: r.last_safe,
        status: r.status,
        next_at: r.next_at.map(runway_core::clock::rfc3339),
        reason: r.reason,
        guards: guards
            .into_iter()
            .map(|(id, name, alertname, slo, state, reason, at)| Guard {
                id: GuardId::from_trusted(id),
                name,
                alertname,
                slo: slo.map(SloId::from_trusted),
                state,
                reason,
                updated_at: runway_core::clock::rfc3339(at),
            })
            .collect(),
        created_by: r.created_by,
        created_at: runway_core::clock::rfc3339(r.created_at),
        updated_at: runway_core::clock::rfc3339(r.updated_at),
    }))
}

/// Milestones one plan may have.
pub const MAX_MILESTONES: usize = 20;
/// Guards one plan may have.
pub const MAX_GUARDS: usize = 20;

/// A new plan.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanCreate {
    /// The flag to roll out.
    #[schema(example = "new-checkout")]
    pub flag: String,
    /// The environment to roll it out in.
    #[schema(example = "production")]
    pub environment: String,
    /// The steps, in order; the flag goes to the first one at once.
    #[schema(min_items = 1, max_items = 20)]
    pub milestones: Vec<Milestone>,
    /// What stops and rolls back the plan.
    #[serde(default)]
    #[schema(max_items = 20)]
    pub guards: Vec<GuardSpec>,
    /// Index of the flexibleRollout strategy to drive; absent = the first one, added if none.
    #[serde(default)]
    pub strategy: Option<usize>,
}

impl Flags {
    pub async fn plan(&self, id: &ReleasePlanId) -> Result<ReleasePlan, ApiError> {
        let mut tx = self.store.read(DbScope::Platform).await?;
        load_plan(&mut tx, id.as_str(), false).await?.ok_or_else(|| ApiError::not_found("no such release plan"))
    }

    pub async fn plans(&self, flag: Option<&str>) -> Result<Vec<ReleasePlan>, ApiError> {
        let mut tx = self.store.read(DbScope::Platform).await?;
        let ids: Vec<String> = on_conn!(&mut tx, c => sqlx::query_scalar("SELECT id FROM flag_release_plans WHERE ($1 IS NULL OR flag_key = $1) ORDER BY id")
            .bind(flag).fetch_all(&mut *c).await)
        .map_err(store_err)?;
        let mut out = Vec::new();
        for id in ids {
            out.extend(load_plan(&mut tx, &id, false).await?);
        }
        Ok(out)
    }

    /// Starts a plan: the flag goes to the first milestone now.
    pub async fn create_plan(&self, ctx: &AuditContext, p: PlanCreate) -> Result<ReleasePlan, ApiError> {
        runway_core::bounds::items("/milestones", p.milestones.len(), MAX_MILESTONES)?;
        runway_core::bounds::items("/guards", p.guards.len(), MAX_GUARDS)?;
        validate_milestones(&p.milestones)?;
        let mut names = std::collections::HashSet::new();
        for (i, g) in p.guards.iter().enumerate() {
            if g.name.trim().is_empty() || !names.insert(g.name.clone()) {
                return Err(ApiError::validation(format!("guards/{i}/name"), "guard names are required and unique"));
            }
        }
        if !self.snapshot().environments.contains(&p.environment) {
            return Err(ApiError::validation("environment", format!("no environment `{}`", p.environment)));
        }
        let now = self.clock.now_micros();
        let id = ReleasePlanId::generate();
        let mut tx = self.store.write(DbScope::Platform).await?;
        let busy: Option<String> = on_conn!(&mut tx, c => sqlx::query_scalar(
            "SELECT id FROM flag_release_plans WHERE flag_key = $1 AND environment = $2 AND status IN ('active', 'paused')")
            .bind(&p.flag).bind(&p.environment).fetch_optional(&mut *c).await)
        .map_err(store_err)?;
        if let Some(other) = busy {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("release plan {other} is already running for this flag and environment"),
            ));
        }
        let first = p.milestones[0].rollout;
        let mut strategy_index = 0;
        let env = p.environment.clone();
        let flag = p.flag.clone();
        let wanted = p.strategy;
        let (stored, _) = self
            .change_in(&mut tx, ctx, &p.flag, "release_plan_started", |doc| {
                let cfg = doc.environments.entry(env.clone()).or_default();
                strategy_index = match wanted {
                    Some(i) => i,
                    None => match cfg.strategies.iter().position(|s| s.name == "flexibleRollout") {
                        Some(i) => i,
                        None => {
                            cfg.strategies.insert(
                                0,
                                StrategyDef {
                                    name: "flexibleRollout".into(),
                                    parameters: Some(
                                        [
                                            ("rollout".to_string(), json!("0")),
                                            ("stickiness".into(), json!("default")),
                                            ("groupId".into(), json!(flag)),
                                        ]
                                        .into_iter()
                                        .collect(),
                                    ),
                                    ..Default::default()
                                },
                            );
                            0
                        }
                    },
                };
                set_rollout(doc, &env, strategy_index, first, true)
                    .map_err(|e| ApiError::validation("strategy", e.detail))
            })
            .await?;
        let _ = stored;
        let next_at = p.milestones[0].wait_secs.map(|w| now + w as i64 * 1_000_000);
        let milestones = serde_json::to_string(&p.milestones).map_err(ApiError::internal)?;
        let actor = format!("{}:{}", ctx.actor_kind.as_str(), ctx.actor_id);
        let single = p.milestones.len() == 1 && p.milestones[0].wait_secs.is_none();
        let (status, last_safe) = if single { ("completed", 0) } else { ("active", -1) };
        on_conn!(&mut tx, c => sqlx::query(sqlx::AssertSqlSafe(format!("INSERT INTO flag_release_plans ({PLAN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8, NULL, $9, $10, $10)")))
            .bind(id.as_str()).bind(&p.flag).bind(&p.environment).bind(strategy_index as i64).bind(&milestones)
            .bind(last_safe).bind(status).bind(next_at).bind(&actor).bind(now)
            .execute(&mut *c).await.map(|_| ()))
        .map_err(store_err)?;
        for g in &p.guards {
            on_conn!(&mut tx, c => sqlx::query("INSERT INTO flag_guards (id, plan_id, name, alertname, slo_id, state, updated_at) VALUES ($1, $2, $3, $4, $5, 'ok', $6)")
                .bind(GuardId::generate().as_str()).bind(id.as_str()).bind(&g.name).bind(&g.alertname).bind(g.slo.as_ref().map(|s| s.as_str())).bind(now)
                .execute(&mut *c).await.map(|_| ()))
            .map_err(store_err)?;
        }
        runway_audit::append(&mut tx, &*self.clock, ctx, &Chain::Platform, Change {
            action: "release_plan.created",
            target_kind: "release_plan",
            target_id: id.as_str(),
            summary: json!({"flag": p.flag, "environment": p.environment, "milestones": p.milestones, "guards": p.guards}),
        })
        .await?;
        tx.commit().await?;
        self.reload().await?;
        self.plan(&id).await
    }

    /// Moves a plan to its next milestone (by hand or when its wait is over).
    pub async fn advance_plan(&self, ctx: &AuditContext, id: &ReleasePlanId) -> Result<ReleasePlan, ApiError> {
        self.advance(ctx, id, false).await
    }

    /// Moves a plan on; with `only_if_due` (the scheduler) nothing happens unless its wait is
    /// over once the row is locked, so two replicas' schedulers never advance it twice.
    async fn advance(
        &self,
        ctx: &AuditContext,
        id: &ReleasePlanId,
        only_if_due: bool,
    ) -> Result<ReleasePlan, ApiError> {
        let mut tx = self.store.write(DbScope::Platform).await?;
        let plan =
            load_plan(&mut tx, id.as_str(), true).await?.ok_or_else(|| ApiError::not_found("no such release plan"))?;
        let due = plan.status == "active"
            && plan
                .next_at
                .as_deref()
                .and_then(runway_core::clock::parse_rfc3339)
                .is_some_and(|t| t <= self.clock.now_micros());
        if only_if_due && !due {
            return Ok(plan);
        }
        if plan.status != "active" && plan.status != "paused" {
            return Err(ApiError::new(ErrorCode::InvalidTransition, format!("the plan is {}", plan.status)));
        }
        if plan.guards.iter().any(|g| g.state == "tripped") {
            return Err(ApiError::new(ErrorCode::Conflict, "a guard is tripped; clear it before advancing"));
        }
        let now = self.clock.now_micros();
        let (next, last_safe, done) = next_step(&plan.milestones, plan.current);
        if next != plan.current {
            let m = &plan.milestones[next as usize];
            let (env, strategy, rollout) = (plan.environment.clone(), plan.strategy, m.rollout);
            self.change_in(&mut tx, ctx, &plan.flag, "release_plan_advanced", |doc| {
                set_rollout(doc, &env, strategy, rollout, false)
            })
            .await?;
        }
        let status = if done {
            "completed"
        } else if plan.status == "paused" {
            "paused"
        } else {
            "active"
        };
        let next_at = if done || status == "paused" {
            None
        } else {
            plan.milestones[next as usize].wait_secs.map(|w| now + w as i64 * 1_000_000)
        };
        on_conn!(&mut tx, c => sqlx::query("UPDATE flag_release_plans SET current = $2, last_safe = $3, status = $4, next_at = $5, updated_at = $6 WHERE id = $1")
            .bind(id.as_str()).bind(next).bind(last_safe).bind(status).bind(next_at).bind(now)
            .execute(&mut *c).await.map(|_| ()))
        .map_err(store_err)?;
        runway_audit::append(&mut tx, &*self.clock, ctx, &Chain::Platform, Change {
            action: if done { "release_plan.completed" } else { "release_plan.advanced" },
            target_kind: "release_plan",
            target_id: id.as_str(),
            summary: json!({"flag": plan.flag, "environment": plan.environment, "milestone": next, "rollout": plan.milestones[next as usize].rollout}),
        })
        .await?;
        tx.commit().await?;
        self.reload().await?;
        self.plan(id).await
    }

    /// Pauses, resumes or cancels a plan.
    pub async fn set_plan_status(
        &self,
        ctx: &AuditContext,
        id: &ReleasePlanId,
        to: &str,
    ) -> Result<ReleasePlan, ApiError> {
        let mut tx = self.store.write(DbScope::Platform).await?;
        let plan =
            load_plan(&mut tx, id.as_str(), true).await?.ok_or_else(|| ApiError::not_found("no such release plan"))?;
        let allowed = match to {
            "paused" => plan.status == "active",
            "active" => plan.status == "paused",
            "cancelled" => plan.status == "active" || plan.status == "paused",
            _ => false,
        };
        if !allowed {
            return Err(ApiError::new(
                ErrorCode::InvalidTransition,
                format!("a {} plan cannot become {to}", plan.status),
            ));
        }
        let now = self.clock.now_micros();
        let next_at = if to == "active" {
            plan.milestones[plan.current as usize].wait_secs.map(|w| now + w as i64 * 1_000_000)
        } else {
            None
        };
        on_conn!(&mut tx, c => sqlx::query("UPDATE flag_release_plans SET status = $2, next_at = $3, updated_at = $4 WHERE id = $1")
            .bind(id.as_str()).bind(to).bind(next_at).bind(now).execute(&mut *c).await.map(|_| ()))
        .map_err(store_err)?;
        let action = match to {
            "paused" => "release_plan.paused",
            "active" => "release_plan.resumed",
            _ => "release_plan.cancelled",
        };
        runway_audit::append(
            &mut tx,
            &*self.clock,
            ctx,
            &Chain::Platform,
            Change {
                action,
                target_kind: "release_plan",
                target_id: id.as_str(),
                summary: json!({"flag": plan.flag, "environment": plan.environment}),
            },
        )
        .await?;
        tx.commit().await?;
        self.plan(id).await
    }

    /// Applies a guard signal: firing trips matching guards and rolls their plans back; a
    /// resolved signal clears the guard (the plan stays where the rollback left it).
    /// `ctx` is whoever sent the signal (the credential of an API call, or the system for an
    /// automatic one); the audit entries it writes name that actor.
    pub async fn guard_signal(&self, ctx: &AuditContext, signal: GuardSignal) -> Result<Vec<ReleasePlanId>, ApiError> {
        let candidates: Vec<(String, String)> = {
            let mut tx = self.store.read(DbScope::Platform).await?;
            match &signal.target {
                GuardTarget::Named { plan, guard } => {
                    let found: Option<String> = on_conn!(&mut tx, c => sqlx::query_scalar("SELECT name FROM flag_guards WHERE plan_id = $1 AND name = $2")
                        .bind(plan.as_str()).bind(guard).fetch_optional(&mut *c).await)
                    .map_err(store_err)?;
                    if found.is_none() {
                        return Err(ApiError::not_found(format!("release plan {plan} has no guard `{guard}`")));
                    }
                    vec![(plan.as_str().to_owned(), guard.clone())]
                }
                GuardTarget::Alert { alertname, flag, environment } => {
                    let rows: Vec<(String, String)> = on_conn!(&mut tx, c => sqlx::query_as(
                        "SELECT g.plan_id, g.name FROM flag_guards g JOIN flag_release_plans p ON p.id = g.plan_id
                         WHERE g.alertname = $1 AND ($2 IS NULL OR p.flag_key = $2) AND ($3 IS NULL OR p.environment = $3)
                           AND p.status IN ('active', 'paused', 'rolled_back') ORDER BY g.plan_id")
                        .bind(alertname).bind(flag.as_deref()).bind(environment.as_deref()).fetch_all(&mut *c).await)
                    .map_err(store_err)?;
                    rows
                }
                GuardTarget::Slo { slo } => {
                    let rows: Vec<(String, String)> = on_conn!(&mut tx, c => sqlx::query_as(
                        "SELECT g.plan_id, g.name FROM flag_guards g JOIN flag_release_plans p ON p.id = g.plan_id
                         WHERE g.slo_id = $1 AND p.status IN ('active', 'paused', 'rolled_back') ORDER BY g.plan_id")
                        .bind(slo.as_str()).fetch_all(&mut *c).await)
                    .map_err(store_err)?;
                    rows
                }
            }
        };
        let mut rolled_back = Vec::new();
        let named = matches!(signal.target, GuardTarget::Named { .. });
        for (plan_id, guard) in candidates {
            match self.apply_guard(ctx, &plan_id, &guard, &signal).await {
                Ok(true) => rolled_back.push(ReleasePlanId::from_trusted(plan_id)),
                Ok(false) => {}
                // A guard set by name reports its own failure; an alert fans out, so one plan
                // that cannot roll back must not keep the others from doing so.
                Err(e) if named => return Err(e),
                Err(e) => {
                    tracing::error!(plan = %plan_id, error = %e.detail, "guard tripped but the plan could not roll back")
                }
            }
        }
        if !rolled_back.is_empty() {
            self.reload().await?;
        }
        Ok(rolled_back)
    }

    async fn apply_guard(
        &self,
        ctx: &AuditContext,
        plan_id: &str,
        guard: &str,
        signal: &GuardSignal,
    ) -> Result<bool, ApiError> {
        let now = self.clock.now_micros();
        let mut tx = self.store.write(DbScope::Platform).await?;
        let Some(plan) = load_plan(&mut tx, plan_id, true).await? else { return Ok(false) };
        let state = if signal.firing { "tripped" } else { "ok" };
        on_conn!(&mut tx, c => sqlx::query("UPDATE flag_guards SET state = $3, reason = $4, updated_at = $5 WHERE plan_id = $1 AND name = $2")
            .bind(plan_id).bind(guard).bind(state).bind(&signal.reason).bind(now).execute(&mut *c).await.map(|_| ()))
        .map_err(store_err)?;
        let roll_back = signal.firing && (plan.status == "active" || plan.status == "paused");
        if roll_back {
            let rollout = safe_rollout(&plan.milestones, plan.last_safe);
            let (env, strategy) = (plan.environment.clone(), plan.strategy);
            self.change_in(&mut tx, ctx, &plan.flag, "release_plan_rolled_back", |doc| {
                set_rollout(doc, &env, strategy, rollout, false)
            })
            .await?;
            let reason = format!("guard `{guard}` tripped: {}", signal.reason);
            on_conn!(&mut tx, c => sqlx::query("UPDATE flag_release_plans SET status = 'rolled_back', next_at = NULL, reason = $2, current = $3, updated_at = $4 WHERE id = $1")
                .bind(plan_id).bind(&reason).bind(plan.last_safe.max(0)).bind(now).execute(&mut *c).await.map(|_| ()))
            .map_err(store_err)?;
            let payload = json!({"plan": plan_id, "flag": plan.flag, "environment": plan.environment, "guard": guard, "reason": signal.reason, "rollout": rollout});
            runway_audit::append(
                &mut tx,
                &*self.clock,
                ctx,
                &Chain::Platform,
                Change {
                    action: "release_plan.rolled_back",
                    target_kind: "release_plan",
                    target_id: plan_id,
                    summary: payload.clone(),
                },
            )
            .await?;
            tx.commit().await?;
            self.emit("flag.release_plan.rolled_back", payload);
        } else {
            runway_audit::append(
                &mut tx,
                &*self.clock,
                ctx,
                &Chain::Platform,
                Change {
                    action: if signal.firing { "release_guard.tripped" } else { "release_guard.cleared" },
                    target_kind: "release_plan",
                    target_id: plan_id,
                    summary: json!({"guard": guard, "reason": signal.reason}),
                },
            )
            .await?;
            tx.commit().await?;
        }
        Ok(roll_back)
    }

    /// Moves on every active plan whose milestone wait is over.
    pub async fn advance_due_plans(&self) -> Result<usize, ApiError> {
        let now = self.clock.now_micros();
        let due: Vec<String> = {
            let mut tx = self.store.read(DbScope::Platform).await?;
            on_conn!(&mut tx, c => sqlx::query_scalar("SELECT id FROM flag_release_plans WHERE status = 'active' AND next_at IS NOT NULL AND next_at <= $1 ORDER BY next_at LIMIT 100")
                .bind(now).fetch_all(&mut *c).await)
            .map_err(store_err)?
        };
        let mut n = 0;
        for id in due {
            let id = ReleasePlanId::from_trusted(id);
            match self.advance(&AuditContext::system("release-plan"), &id, true).await {
                Ok(_) => n += 1,
                Err(e) => tracing::warn!(plan = id.as_str(), error = %e.detail, "could not advance release plan"),
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rollout: u32, wait: Option<u64>) -> Milestone {
        Milestone { name: String::new(), rollout, wait_secs: wait }
    }

    #[test]
    fn plans_walk_their_milestones_and_know_what_is_safe() {
        let ms = vec![m(1, Some(60)), m(10, Some(60)), m(50, Some(60)), m(100, None)];
        assert_eq!(next_step(&ms, 0), (1, 0, false), "1 % passed its watch");
        assert_eq!(next_step(&ms, 2), (3, 3, true), "the last milestone without a watch ends the plan");
        let ms2 = vec![m(10, Some(60)), m(100, Some(60))];
        assert_eq!(next_step(&ms2, 0), (1, 0, false), "a watched last milestone keeps the plan open");
        assert_eq!(next_step(&ms2, 1), (1, 1, true));
        assert_eq!(safe_rollout(&ms, -1), 0, "nothing passed yet: back to 0 %");
        assert_eq!(safe_rollout(&ms, 1), 10);
    }

    #[test]
    fn milestones_must_climb() {
        assert!(validate_milestones(&[m(10, None), m(5, None)]).is_err());
        assert!(validate_milestones(&[m(101, None)]).is_err());
        assert!(validate_milestones(&[]).is_err());
        assert!(validate_milestones(&[m(1, None), m(100, None)]).is_ok());
    }
}
