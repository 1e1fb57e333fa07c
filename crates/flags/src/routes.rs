//! The flag management API; wire types stay here, apart from the stored documents.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use runway_core::clock::parse_rfc3339;
use runway_core::error::Problem;
use runway_core::id::{ReleasePlanId, ScheduleId};
use runway_core::{ApiError, ApiJson, ApiQuery, Page, PageQuery};
use runway_flags_engine::Context;
use runway_flags_engine::wire::{ClientFeatures, ConstraintDef, DeltaDocument};
use runway_identity::Authorized;
use runway_identity::scope::{FlagsEvaluate, FlagsRead, FlagsWrite};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::model::{EnvConfig, FlagDocument, FlagKind};
use crate::plans::{GuardSignal, GuardTarget, PlanCreate, ReleasePlan};
use crate::schedule::{Schedule, ScheduledChange};
use crate::usage::{StaleFlag, UsageRow};
use crate::{Environment, FlagVersion, Flags, ImportReport, Segment, StoredFlag};

type St = State<Arc<Flags>>;

pub fn router() -> OpenApiRouter<Arc<Flags>> {
    OpenApiRouter::new()
        .routes(routes!(create_flag, list_flags))
        .routes(routes!(get_flag, update_flag, archive_flag))
        .routes(routes!(put_env_config))
        .routes(routes!(enable_flag))
        .routes(routes!(disable_flag))
        .routes(routes!(kill_flag))
        .routes(routes!(flag_versions))
        .routes(routes!(rollback_flag))
        .routes(routes!(copy_flag))
        .routes(routes!(create_schedule, list_schedules))
        .routes(routes!(cancel_schedule))
        .routes(routes!(import_flags))
        .routes(routes!(export_flags))
        .routes(routes!(evaluate_flags))
        .routes(routes!(usage))
        .routes(routes!(stale))
        .routes(routes!(create_environment, list_environments))
        .routes(routes!(create_segment, list_segments))
        .routes(routes!(update_segment, delete_segment))
        .routes(routes!(create_plan, list_plans))
        .routes(routes!(get_plan))
        .routes(routes!(advance_plan))
        .routes(routes!(pause_plan))
        .routes(routes!(resume_plan))
        .routes(routes!(cancel_plan))
        .routes(routes!(set_guard))
        .routes(routes!(alertmanager))
}

/// A flag as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlagOut {
    pub key: String,
    pub description: String,
    pub kind: FlagKind,
    pub tags: Vec<String>,
    pub owner: Option<String>,
    pub archived: bool,
    pub version: i64,
    pub environments: BTreeMap<String, EnvConfig>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<StoredFlag> for FlagOut {
    fn from(s: StoredFlag) -> Self {
        let d = s.document;
        FlagOut {
            key: d.key,
            description: d.description,
            kind: d.kind,
            tags: d.tags,
            owner: d.owner,
            archived: d.archived,
            version: s.version,
            environments: d.environments,
            created_at: runway_core::clock::rfc3339(s.created_at),
            updated_at: runway_core::clock::rfc3339(s.updated_at),
        }
    }
}

/// A new flag.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagCreate {
    pub key: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub kind: FlagKind,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub owner: Option<String>,
    /// Configuration per environment; environments left out are off.
    #[serde(default)]
    pub environments: BTreeMap<String, EnvConfig>,
}

/// Changes to a flag's metadata.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagUpdate {
    pub description: Option<String>,
    pub kind: Option<FlagKind>,
    pub tags: Option<Vec<String>>,
    pub owner: Option<Option<String>>,
    pub archived: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FlagListQuery {
    pub tag: Option<String>,
    /// List archived flags instead.
    #[serde(default)]
    pub archived: bool,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[utoipa::path(post, path = "/v1/flags", tag = "flags", request_body = FlagCreate,
    responses((status = 201, body = FlagOut), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_flag(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    ApiJson(b): ApiJson<FlagCreate>,
) -> Result<(StatusCode, Json<FlagOut>), ApiError> {
    let doc = FlagDocument {
        key: b.key,
        description: b.description,
        kind: b.kind,
        tags: b.tags,
        owner: b.owner,
        archived: false,
        environments: b.environments,
    };
    Ok((StatusCode::CREATED, Json(f.create(&auth.audit, doc).await?.into())))
}

#[utoipa::path(get, path = "/v1/flags", tag = "flags", params(FlagListQuery), responses((status = 200, body = Page<FlagOut>)))]
async fn list_flags(
    State(f): St,
    _auth: Authorized<FlagsRead>,
    ApiQuery(q): ApiQuery<FlagListQuery>,
) -> Result<Json<Page<FlagOut>>, ApiError> {
    let cursor = PageQuery { limit: q.limit, cursor: q.cursor }.cursor()?;
    let rows: Vec<StoredFlag> = f
        .list(q.tag.as_deref(), q.archived)
        .await?
        .into_iter()
        .filter(|s| cursor.after.as_deref().is_none_or(|a| s.document.key.as_str() > a))
        .take(cursor.limit as usize + 1)
        .collect();
    Ok(Json(Page::from_rows(rows, cursor.limit, |s| s.document.key.clone()).map(FlagOut::from)))
}

#[utoipa::path(get, path = "/v1/flags/{key}", tag = "flags", params(("key" = String, Path)),
    responses((status = 200, body = FlagOut), (status = 404, body = Problem)))]
async fn get_flag(
    State(f): St,
    _auth: Authorized<FlagsRead>,
    Path(key): Path<String>,
) -> Result<Json<FlagOut>, ApiError> {
    Ok(Json(f.get(&key).await?.into()))
}

#[utoipa::path(patch, path = "/v1/flags/{key}", tag = "flags", params(("key" = String, Path)), request_body = FlagUpdate,
    responses((status = 200, body = FlagOut), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn update_flag(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    Path(key): Path<String>,
    ApiJson(b): ApiJson<FlagUpdate>,
) -> Result<Json<FlagOut>, ApiError> {
    let stored = f
        .change(&auth.audit, &key, "updated", |d| {
            if let Some(v) = b.description {
                d.description = v;
            }
            if let Some(v) = b.kind {
                d.kind = v;
            }
            if let Some(v) = b.tags {
                d.tags = v;
            }
            if let Some(v) = b.owner {
                d.owner = v;
            }
            if let Some(v) = b.archived {
                d.archived = v;
            }
            Ok(())
        })
        .await?;
    Ok(Json(stored.into()))
}

#[utoipa::path(delete, path = "/v1/flags/{key}", tag = "flags", params(("key" = String, Path)),
    responses((status = 200, body = FlagOut, description = "archived: no longer evaluated, history kept"), (status = 404, body = Problem)))]
async fn archive_flag(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    Path(key): Path<String>,
) -> Result<Json<FlagOut>, ApiError> {
    Ok(Json(
        f.change(&auth.audit, &key, "archived", |d| {
            d.archived = true;
            Ok(())
        })
        .await?
        .into(),
    ))
}

#[utoipa::path(put, path = "/v1/flags/{key}/environments/{environment}", tag = "flags",
    params(("key" = String, Path), ("environment" = String, Path)), request_body = EnvConfig,
    responses((status = 200, body = FlagOut), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn put_env_config(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    Path((key, env)): Path<(String, String)>,
    ApiJson(cfg): ApiJson<EnvConfig>,
) -> Result<Json<FlagOut>, ApiError> {
    Ok(Json(f.set_env_config(&auth.audit, &key, &env, cfg).await?.into()))
}

#[utoipa::path(post, path = "/v1/flags/{key}/environments/{environment}/enable", tag = "flags",
    params(("key" = String, Path), ("environment" = String, Path)), responses((status = 200, body = FlagOut), (status = 404, body = Problem)))]
async fn enable_flag(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    Path((key, env)): Path<(String, String)>,
) -> Result<Json<FlagOut>, ApiError> {
    Ok(Json(f.set_enabled(&auth.audit, &key, &env, true).await?.into()))
}

#[utoipa::path(post, path = "/v1/flags/{key}/environments/{environment}/disable", tag = "flags",
    params(("key" = String, Path), ("environment" = String, Path)), responses((status = 200, body = FlagOut), (status = 404, body = Problem)))]
async fn disable_flag(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    Path((key, env)): Path<(String, String)>,
) -> Result<Json<FlagOut>, ApiError> {
    Ok(Json(f.set_enabled(&auth.audit, &key, &env, false).await?.into()))
}

#[utoipa::path(post, path = "/v1/flags/{key}/kill", tag = "flags", params(("key" = String, Path), EnvQuery),
    responses((status = 200, body = FlagOut, description = "off (in `environment`, or everywhere); live on every replica within a second"), (status = 404, body = Problem)))]
async fn kill_flag(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    Path(key): Path<String>,
    ApiQuery(q): ApiQuery<EnvQuery>,
) -> Result<Json<FlagOut>, ApiError> {
    Ok(Json(f.kill(&auth.audit, &key, q.environment.as_deref()).await?.into()))
}

/// A flag's history, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VersionList {
    pub data: Vec<FlagVersion>,
}

#[utoipa::path(get, path = "/v1/flags/{key}/versions", tag = "flags", params(("key" = String, Path)),
    responses((status = 200, body = VersionList), (status = 404, body = Problem)))]
async fn flag_versions(
    State(f): St,
    _auth: Authorized<FlagsRead>,
    Path(key): Path<String>,
) -> Result<Json<VersionList>, ApiError> {
    Ok(Json(VersionList { data: f.history(&key).await? }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version whose configuration to restore (as a new version).
    pub version: i64,
}

#[utoipa::path(post, path = "/v1/flags/{key}/rollback", tag = "flags", params(("key" = String, Path)), request_body = RollbackRequest,
    responses((status = 200, body = FlagOut), (status = 404, body = Problem)))]
async fn rollback_flag(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    Path(key): Path<String>,
    ApiJson(b): ApiJson<RollbackRequest>,
) -> Result<Json<FlagOut>, ApiError> {
    Ok(Json(f.rollback(&auth.audit, &key, b.version).await?.into()))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyRequest {
    pub from: String,
    pub to: String,
}

#[utoipa::path(post, path = "/v1/flags/{key}/copy", tag = "flags", params(("key" = String, Path)), request_body = CopyRequest,
    responses((status = 200, body = FlagOut), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn copy_flag(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    Path(key): Path<String>,
    ApiJson(b): ApiJson<CopyRequest>,
) -> Result<Json<FlagOut>, ApiError> {
    Ok(Json(f.copy(&auth.audit, &key, &b.from, &b.to).await?.into()))
}

/// A change to one environment of a flag, made at a given time.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleCreate {
    /// When to make the change (RFC 3339); a time in the past applies at the next scheduler tick.
    #[schema(example = "2026-12-01T09:00:00Z")]
    pub apply_at: String,
    /// The environment the change applies to.
    #[schema(example = "production")]
    pub environment: String,
    /// Turn the flag on (`true`) or off (`false`) there. Give this, `config`, or both.
    pub enabled: Option<bool>,
    /// Replace the environment's whole configuration (applied before `enabled`).
    pub config: Option<EnvConfig>,
}

#[utoipa::path(post, path = "/v1/flags/{key}/schedules", tag = "flags", params(("key" = String, Path)), request_body = ScheduleCreate,
    responses((status = 201, body = Schedule), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn create_schedule(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    Path(key): Path<String>,
    ApiJson(b): ApiJson<ScheduleCreate>,
) -> Result<(StatusCode, Json<Schedule>), ApiError> {
    let apply_at =
        parse_rfc3339(&b.apply_at).ok_or_else(|| ApiError::validation("apply_at", "must be an RFC 3339 time"))?;
    let change = ScheduledChange { environment: b.environment, enabled: b.enabled, config: b.config };
    Ok((StatusCode::CREATED, Json(f.schedule(&auth.audit, &key, change, apply_at).await?)))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleList {
    pub data: Vec<Schedule>,
}

#[utoipa::path(get, path = "/v1/flags/{key}/schedules", tag = "flags", params(("key" = String, Path)),
    responses((status = 200, body = ScheduleList)))]
async fn list_schedules(
    State(f): St,
    _auth: Authorized<FlagsRead>,
    Path(key): Path<String>,
) -> Result<Json<ScheduleList>, ApiError> {
    Ok(Json(ScheduleList { data: f.schedules(&key).await? }))
}

#[utoipa::path(delete, path = "/v1/flags/{key}/schedules/{id}", tag = "flags", params(("key" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 409, body = Problem)))]
async fn cancel_schedule(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    Path((key, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = ScheduleId::parse(&id)?;
    f.cancel_schedule(&auth.audit, &key, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EnvQuery {
    /// The environment; defaults to `flags.default_environment`.
    pub environment: Option<String>,
}

#[utoipa::path(post, path = "/v1/flags/import", tag = "flags", params(EnvQuery),
    request_body(content = Object, description = "Unleash client features document `{version, features, segments}` or delta document `{events}`"),
    responses((status = 200, body = ImportReport), (status = 422, body = Problem)))]
async fn import_flags(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    ApiQuery(q): ApiQuery<EnvQuery>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<ImportReport>, ApiError> {
    let env = f.environment_for(None, q.environment.as_deref())?;
    let parse_err = |e: serde_path_to_error::Error<serde_json::Error>| {
        let path = e.path().to_string().replace(['.', '['], "/").replace(']', "");
        ApiError::validation(path.trim_start_matches('/').to_owned(), e.inner().to_string())
    };
    let doc: ClientFeatures = if body.get("events").is_some() {
        let delta: DeltaDocument = serde_path_to_error::deserialize(body).map_err(parse_err)?;
        // The base is the stored state (not this replica's snapshot, which may lag), holding only
        // flags configured in this environment, so untouched flags get no new version.
        let stored = f.list(None, false).await?;
        let current = ClientFeatures {
            version: 2,
            features: stored
                .iter()
                .filter(|x| x.document.environments.contains_key(&env))
                .map(|x| x.document.feature(&env))
                .collect(),
            segments: Some(
                f.segments()
                    .await?
                    .into_iter()
                    .map(|g| runway_flags_engine::wire::SegmentDef {
                        id: g.id,
                        name: Some(g.name),
                        constraints: g.constraints,
                    })
                    .collect(),
            ),
            query: None,
            meta: None,
        };
        let mut next = current.clone();
        next.apply_delta(&delta.events);
        // Features a delta removed leave this environment.
        for gone in current.features.iter().filter(|c| !next.features.iter().any(|x| x.name == c.name)) {
            let env = env.clone();
            f.change(&auth.audit, &gone.name, "imported", move |d| {
                d.environments.remove(&env);
                Ok(())
            })
            .await?;
        }
        // Only what the delta changed is imported.
        next.features.retain(|x| !current.features.contains(x));
        next
    } else {
        serde_path_to_error::deserialize(body).map_err(parse_err)?
    };
    Ok(Json(f.import(&auth.audit, &env, doc).await?))
}

#[utoipa::path(get, path = "/v1/flags/export", tag = "flags", params(EnvQuery),
    responses((status = 200, description = "Unleash client features document")))]
async fn export_flags(
    State(f): St,
    _auth: Authorized<FlagsRead>,
    ApiQuery(q): ApiQuery<EnvQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let env = f.environment_for(None, q.environment.as_deref())?;
    let state = f.export(&env)?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], state.client_features.clone()).into_response())
}

/// Evaluate flags for a context, with reasons: for debugging targeting.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    pub environment: Option<String>,
    /// Unleash-style context: userId, sessionId, remoteAddress, currentTime, properties.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub context: Context,
    /// Only these flags; absent = all.
    pub flags: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EvaluationOut {
    pub flag: String,
    pub enabled: bool,
    #[schema(value_type = Object)]
    pub variant: Value,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EvaluationList {
    pub environment: String,
    pub data: Vec<EvaluationOut>,
}

#[utoipa::path(post, path = "/v1/flags/evaluate", tag = "flags", request_body = EvaluateRequest,
    responses((status = 200, body = EvaluationList), (status = 404, body = Problem)))]
async fn evaluate_flags(
    State(f): St,
    auth: Authorized<FlagsEvaluate>,
    ApiJson(b): ApiJson<EvaluateRequest>,
) -> Result<Json<EvaluationList>, ApiError> {
    let env = f.environment_for(auth.principal.environment.as_deref(), b.environment.as_deref())?;
    let mut ctx = b.context;
    crate::ofrep::fill_tenant(&mut ctx, &auth.principal);
    Ok(Json(EvaluationList { data: f.evaluate_many(&env, &ctx, b.flags.as_deref())?, environment: env }))
}

impl Flags {
    /// Evaluates flags in one environment with reasons (for `runway flags eval` and debugging).
    pub fn evaluate_many(
        &self,
        env: &str,
        ctx: &Context,
        only: Option<&[String]>,
    ) -> Result<Vec<EvaluationOut>, ApiError> {
        let state = self.env_state(env)?;
        let names: Vec<String> = match only {
            Some(list) => list.to_vec(),
            None => state.engine.names().map(str::to_owned).collect(),
        };
        Ok(names
            .into_iter()
            .map(|name| {
                let e = state.engine.evaluate(&name, ctx);
                EvaluationOut {
                    enabled: e.enabled,
                    variant: serde_json::to_value(&e.variant).unwrap_or_default(),
                    reason: serde_json::to_value(e.reason)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    flag: name,
                }
            })
            .collect())
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    pub flag: Option<String>,
    pub environment: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageList {
    pub data: Vec<UsageRow>,
}

#[utoipa::path(get, path = "/v1/flags/usage", tag = "flags", params(UsageQuery), responses((status = 200, body = UsageList)))]
async fn usage(
    State(f): St,
    _auth: Authorized<FlagsRead>,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<Json<UsageList>, ApiError> {
    // Counts still in memory are written first, so the report includes this replica's latest.
    f.flush_usage().await?;
    Ok(Json(UsageList { data: f.usage_report(q.flag.as_deref(), q.environment.as_deref()).await? }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StaleQuery {
    /// Defaults to `flags.stale_after_days`.
    pub days: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StaleList {
    pub days: u32,
    pub data: Vec<StaleFlag>,
}

#[utoipa::path(get, path = "/v1/flags/stale", tag = "flags", params(StaleQuery), responses((status = 200, body = StaleList)))]
async fn stale(
    State(f): St,
    _auth: Authorized<FlagsRead>,
    ApiQuery(q): ApiQuery<StaleQuery>,
) -> Result<Json<StaleList>, ApiError> {
    f.flush_usage().await?;
    let days = q.days.unwrap_or(f.config.stale_after_days);
    Ok(Json(StaleList { days, data: f.stale_report(days).await? }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentCreate {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnvironmentList {
    pub data: Vec<Environment>,
}

#[utoipa::path(post, path = "/v1/environments", tag = "flags", request_body = EnvironmentCreate,
    responses((status = 201, body = Environment), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_environment(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    ApiJson(b): ApiJson<EnvironmentCreate>,
) -> Result<(StatusCode, Json<Environment>), ApiError> {
    Ok((StatusCode::CREATED, Json(f.create_environment(&auth.audit, &b.name, &b.description).await?)))
}

#[utoipa::path(get, path = "/v1/environments", tag = "flags", responses((status = 200, body = EnvironmentList)))]
async fn list_environments(State(f): St, _auth: Authorized<FlagsRead>) -> Result<Json<EnvironmentList>, ApiError> {
    Ok(Json(EnvironmentList { data: f.environments().await? }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentInput {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[schema(value_type = Vec<Object>)]
    pub constraints: Vec<ConstraintDef>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SegmentList {
    pub data: Vec<Segment>,
}

#[utoipa::path(post, path = "/v1/segments", tag = "flags", request_body = SegmentInput,
    responses((status = 201, body = Segment), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_segment(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    ApiJson(b): ApiJson<SegmentInput>,
) -> Result<(StatusCode, Json<Segment>), ApiError> {
    Ok((StatusCode::CREATED, Json(f.put_segment(&auth.audit, None, &b.name, &b.description, b.constraints).await?)))
}

#[utoipa::path(get, path = "/v1/segments", tag = "flags", responses((status = 200, body = SegmentList)))]
async fn list_segments(State(f): St, _auth: Authorized<FlagsRead>) -> Result<Json<SegmentList>, ApiError> {
    Ok(Json(SegmentList { data: f.segments().await? }))
}

#[utoipa::path(put, path = "/v1/segments/{id}", tag = "flags", params(("id" = i64, Path)), request_body = SegmentInput,
    responses((status = 200, body = Segment), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn update_segment(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    Path(id): Path<i64>,
    ApiJson(b): ApiJson<SegmentInput>,
) -> Result<Json<Segment>, ApiError> {
    Ok(Json(f.put_segment(&auth.audit, Some(id), &b.name, &b.description, b.constraints).await?))
}

#[utoipa::path(delete, path = "/v1/segments/{id}", tag = "flags", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn delete_segment(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    f.delete_segment(&auth.audit, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PlanQuery {
    pub flag: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanList {
    pub data: Vec<ReleasePlan>,
}

#[utoipa::path(post, path = "/v1/release-plans", tag = "flags", request_body = PlanCreate,
    responses((status = 201, body = ReleasePlan), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_plan(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    ApiJson(b): ApiJson<PlanCreate>,
) -> Result<(StatusCode, Json<ReleasePlan>), ApiError> {
    Ok((StatusCode::CREATED, Json(f.create_plan(&auth.audit, b).await?)))
}

#[utoipa::path(get, path = "/v1/release-plans", tag = "flags", params(PlanQuery), responses((status = 200, body = PlanList)))]
async fn list_plans(
    State(f): St,
    _auth: Authorized<FlagsRead>,
    ApiQuery(q): ApiQuery<PlanQuery>,
) -> Result<Json<PlanList>, ApiError> {
    Ok(Json(PlanList { data: f.plans(q.flag.as_deref()).await? }))
}

#[utoipa::path(get, path = "/v1/release-plans/{id}", tag = "flags", params(("id" = String, Path)),
    responses((status = 200, body = ReleasePlan), (status = 404, body = Problem)))]
async fn get_plan(
    State(f): St,
    _auth: Authorized<FlagsRead>,
    Path(id): Path<String>,
) -> Result<Json<ReleasePlan>, ApiError> {
    Ok(Json(f.plan(&ReleasePlanId::parse(&id)?).await?))
}

#[utoipa::path(post, path = "/v1/release-plans/{id}/advance", tag = "flags", params(("id" = String, Path)),
    responses((status = 200, body = ReleasePlan), (status = 409, body = Problem)))]
async fn advance_plan(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    Path(id): Path<String>,
) -> Result<Json<ReleasePlan>, ApiError> {
    Ok(Json(f.advance_plan(&auth.audit, &ReleasePlanId::parse(&id)?).await?))
}

#[utoipa::path(post, path = "/v1/release-plans/{id}/pause", tag = "flags", params(("id" = String, Path)),
    responses((status = 200, body = ReleasePlan), (status = 409, body = Problem)))]
async fn pause_plan(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    Path(id): Path<String>,
) -> Result<Json<ReleasePlan>, ApiError> {
    Ok(Json(f.set_plan_status(&auth.audit, &ReleasePlanId::parse(&id)?, "paused").await?))
}

#[utoipa::path(post, path = "/v1/release-plans/{id}/resume", tag = "flags", params(("id" = String, Path)),
    responses((status = 200, body = ReleasePlan), (status = 409, body = Problem)))]
async fn resume_plan(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    Path(id): Path<String>,
) -> Result<Json<ReleasePlan>, ApiError> {
    Ok(Json(f.set_plan_status(&auth.audit, &ReleasePlanId::parse(&id)?, "active").await?))
}

#[utoipa::path(post, path = "/v1/release-plans/{id}/cancel", tag = "flags", params(("id" = String, Path)),
    responses((status = 200, body = ReleasePlan), (status = 409, body = Problem)))]
async fn cancel_plan(
    State(f): St,
    auth: Authorized<FlagsWrite>,
    Path(id): Path<String>,
) -> Result<Json<ReleasePlan>, ApiError> {
    Ok(Json(f.set_plan_status(&auth.audit, &ReleasePlanId::parse(&id)?, "cancelled").await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardState {
    /// `tripped` rolls the plan back to its last safe milestone; `ok` clears the guard.
    pub state: String,
    #[serde(default)]
    pub reason: String,
}

#[utoipa::path(put, path = "/v1/release-plans/{id}/guards/{name}", tag = "flags", params(("id" = String, Path), ("name" = String, Path)),
    request_body = GuardState, responses((status = 200, body = ReleasePlan), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn set_guard(
    State(f): St,
    _auth: Authorized<FlagsWrite>,
    Path((id, name)): Path<(String, String)>,
    ApiJson(b): ApiJson<GuardState>,
) -> Result<Json<ReleasePlan>, ApiError> {
    let plan = ReleasePlanId::parse(&id)?;
    let firing = match b.state.as_str() {
        "tripped" => true,
        "ok" => false,
        _ => return Err(ApiError::validation("state", "is `tripped` or `ok`")),
    };
    let reason = if b.reason.is_empty() { "set through the API".to_owned() } else { b.reason };
    f.guard_signal(GuardSignal { target: GuardTarget::Named { plan: plan.clone(), guard: name }, firing, reason })
        .await?;
    Ok(Json(f.plan(&plan).await?))
}

/// Alertmanager's webhook payload (version 4), the parts Runway reads.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct AlertmanagerPayload {
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Deserialize)]
pub struct Alert {
    /// `firing` or `resolved`.
    pub status: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertResult {
    /// Plans rolled back by this delivery.
    pub rolled_back: Vec<ReleasePlanId>,
}

#[utoipa::path(post, path = "/v1/flags/guards/alertmanager", tag = "flags", request_body = AlertmanagerPayload,
    responses((status = 200, body = AlertResult)))]
async fn alertmanager(
    State(f): St,
    _auth: Authorized<FlagsWrite>,
    ApiJson(b): ApiJson<AlertmanagerPayload>,
) -> Result<Json<AlertResult>, ApiError> {
    let mut rolled_back = Vec::new();
    for (i, a) in b.alerts.iter().enumerate() {
        let Some(alertname) = a.labels.get("alertname") else {
            return Err(ApiError::validation(format!("alerts/{i}/labels/alertname"), "is required"));
        };
        let reason = a.annotations.get("summary").cloned().unwrap_or_else(|| format!("alert {alertname} {}", a.status));
        let signal = GuardSignal {
            target: GuardTarget::Alert {
                alertname: alertname.clone(),
                flag: a.labels.get("flag").cloned(),
                environment: a.labels.get("environment").cloned(),
            },
            firing: a.status == "firing",
            reason,
        };
        rolled_back.extend(f.guard_signal(signal).await?);
    }
    let _ = json!(null);
    Ok(Json(AlertResult { rolled_back }))
}
