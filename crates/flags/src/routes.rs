//! The flag management API; wire types stay here, apart from the stored documents.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use runway_core::clock::parse_rfc3339;
use runway_core::error::Problem;
use runway_core::id::{ReleasePlanId, ScheduleId};
use runway_core::{ApiError, ApiJson, ApiQuery, ErrorCode, Page, PageQuery};
use runway_flags_engine::Context;
use runway_flags_engine::wire::{ClientFeatures, ConstraintDef, DeltaDocument};
use runway_identity::scope::{FlagsEvaluate, FlagsRead, FlagsWrite};
use runway_identity::{Authorized, Platform};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::import::Incoming;
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

/// A flag's configuration per environment: at most 100 environments.
pub struct EnvironmentConfigs;

impl utoipa::PartialSchema for EnvironmentConfigs {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        runway_core::bounds::object_schema(
            "Configuration per environment name; environments left out are off (at most 100).",
            crate::model::MAX_ENVIRONMENTS,
            Some(utoipa::openapi::Ref::from_schema_name("EnvConfig").into()),
        )
    }
}

impl utoipa::ToSchema for EnvironmentConfigs {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        use utoipa::PartialSchema;
        schemas.push(("EnvConfig".into(), EnvConfig::schema()));
        EnvConfig::schemas(schemas);
    }
}

/// A flag as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlagOut {
    /// The flag's key, as code asks for it.
    #[schema(example = "new-checkout")]
    pub key: String,
    /// What the flag is for.
    pub description: String,
    /// `boolean` (on/off) or `variant` (picks among variants).
    pub kind: FlagKind,
    /// Labels to find flags by.
    pub tags: Vec<String>,
    /// Who is responsible for the flag.
    pub owner: Option<String>,
    /// Archived flags are no longer evaluated; their history is kept.
    pub archived: bool,
    /// The current version; every change makes a new one.
    pub version: i64,
    /// Configuration per environment; environments left out are off.
    #[schema(value_type = EnvironmentConfigs)]
    pub environments: BTreeMap<String, EnvConfig>,
    /// When the flag was created (RFC 3339).
    pub created_at: String,
    /// When the flag last changed (RFC 3339).
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
    /// The flag's key, as code asks for it: 1 to 200 characters without '/', '?', '#'.
    #[schema(example = "new-checkout")]
    pub key: String,
    /// What the flag is for (at most 2,000 characters).
    #[serde(default)]
    #[schema(example = "One-page checkout")]
    pub description: String,
    /// `boolean` (default) or `variant`.
    #[serde(default)]
    pub kind: FlagKind,
    /// Labels to find flags by (each 1 to 100 characters).
    #[serde(default)]
    #[schema(max_items = 100, example = json!(["payments"]))]
    pub tags: Vec<String>,
    /// Who is responsible for the flag.
    #[serde(default)]
    #[schema(example = "team-payments")]
    pub owner: Option<String>,
    /// Configuration per environment; environments left out are off.
    #[serde(default)]
    #[schema(value_type = EnvironmentConfigs)]
    pub environments: BTreeMap<String, EnvConfig>,
}

/// Changes to a flag's metadata.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagUpdate {
    /// A new description.
    pub description: Option<String>,
    /// A new kind.
    pub kind: Option<FlagKind>,
    /// Replaces the tags.
    #[schema(max_items = 100)]
    pub tags: Option<Vec<String>>,
    /// A new owner; `null` clears it.
    pub owner: Option<Option<String>>,
    /// Archive (`true`) or restore (`false`) the flag.
    pub archived: Option<bool>,
}

/// Which flags to list, and which page.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FlagListQuery {
    /// Only flags with this tag.
    #[param(example = "payments")]
    pub tag: Option<String>,
    /// List archived flags instead.
    #[serde(default)]
    pub archived: bool,
    /// Items per page, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The `{key}` path parameter.
const KEY: &str = "The flag's key.";
/// The `{environment}` path parameter.
const ENV: &str = "The environment's name.";

/// Create a flag
///
/// Creates a flag with its configuration per environment, as version 1, audited on the
/// platform chain. Live on every replica within a second.
#[utoipa::path(post, path = "/v1/flags", tag = "flags", request_body = FlagCreate,
    responses((status = 201, body = FlagOut, description = "The new flag."),
        (status = 409, body = Problem, description = "`conflict`: a flag with this key exists."),
        (status = 422, body = Problem, description = "`validation_failed`: `field` is the JSON pointer of what is wrong (an unknown operator, a rollout above 100, …).")))]
async fn create_flag(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
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

/// List flags
///
/// Flags by key, a page at a time.
#[utoipa::path(get, path = "/v1/flags", tag = "flags", params(FlagListQuery), responses((status = 200, body = Page<FlagOut>, description = "One page of flags.")))]
async fn list_flags(
    State(f): St,
    _auth: Authorized<Platform<FlagsRead>>,
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

/// Get a flag
#[utoipa::path(get, path = "/v1/flags/{key}", tag = "flags", params(("key" = String, Path, description = KEY, example = "new-checkout")),
    responses((status = 200, body = FlagOut, description = "The flag.")))]
async fn get_flag(
    State(f): St,
    _auth: Authorized<Platform<FlagsRead>>,
    Path(key): Path<String>,
) -> Result<Json<FlagOut>, ApiError> {
    Ok(Json(f.get(&key).await?.into()))
}

/// Change a flag's metadata
///
/// Changes description, kind, tags, owner or archived state, as a new version.
#[utoipa::path(patch, path = "/v1/flags/{key}", tag = "flags", params(("key" = String, Path, description = KEY, example = "new-checkout")), request_body = FlagUpdate,
    responses((status = 200, body = FlagOut, description = "The flag as changed."),
        (status = 409, body = Problem, description = "`conflict`: other flags depend on this one, so it cannot be archived.")))]
async fn update_flag(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
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

/// Archive a flag
///
/// Archives the flag: no longer evaluated, history kept.
#[utoipa::path(delete, path = "/v1/flags/{key}", tag = "flags", params(("key" = String, Path, description = KEY, example = "new-checkout")),
    responses((status = 200, body = FlagOut, description = "The flag, archived: no longer evaluated, history kept."),
        (status = 409, body = Problem, description = "`conflict`: other flags depend on this one.")))]
async fn archive_flag(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
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

/// Set a flag's configuration in one environment
///
/// Replaces the environment's whole configuration (enabled, strategies, variants,
/// dependencies) as a new version.
#[utoipa::path(put, path = "/v1/flags/{key}/environments/{environment}", tag = "flags",
    params(("key" = String, Path, description = KEY, example = "new-checkout"), ("environment" = String, Path, description = ENV, example = "production")), request_body = EnvConfig,
    responses((status = 200, body = FlagOut, description = "The flag as changed."),
        (status = 409, body = Problem, description = "`conflict`: a flag others depend on cannot gain dependencies.")))]
async fn put_env_config(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
    Path((key, env)): Path<(String, String)>,
    ApiJson(cfg): ApiJson<EnvConfig>,
) -> Result<Json<FlagOut>, ApiError> {
    Ok(Json(f.set_env_config(&auth.audit, &key, &env, cfg).await?.into()))
}

/// Turn a flag on in one environment
#[utoipa::path(post, path = "/v1/flags/{key}/environments/{environment}/enable", tag = "flags",
    params(("key" = String, Path, description = KEY, example = "new-checkout"), ("environment" = String, Path, description = ENV, example = "production")),
    responses((status = 200, body = FlagOut, description = "The flag, on there (its strategies decide for whom).")))]
async fn enable_flag(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
    Path((key, env)): Path<(String, String)>,
) -> Result<Json<FlagOut>, ApiError> {
    Ok(Json(f.set_enabled(&auth.audit, &key, &env, true).await?.into()))
}

/// Turn a flag off in one environment
#[utoipa::path(post, path = "/v1/flags/{key}/environments/{environment}/disable", tag = "flags",
    params(("key" = String, Path, description = KEY, example = "new-checkout"), ("environment" = String, Path, description = ENV, example = "production")),
    responses((status = 200, body = FlagOut, description = "The flag, off there.")))]
async fn disable_flag(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
    Path((key, env)): Path<(String, String)>,
) -> Result<Json<FlagOut>, ApiError> {
    Ok(Json(f.set_enabled(&auth.audit, &key, &env, false).await?.into()))
}

/// Kill a flag
///
/// The kill switch: turns the flag off in one environment, or everywhere without
/// `environment`, live on every replica within a second.
#[utoipa::path(post, path = "/v1/flags/{key}/kill", tag = "flags", params(("key" = String, Path, description = KEY, example = "new-checkout"), KillQuery),
    responses((status = 200, body = FlagOut, description = "The flag, off (in `environment`, or everywhere).")))]
async fn kill_flag(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
    Path(key): Path<String>,
    ApiQuery(q): ApiQuery<KillQuery>,
) -> Result<Json<FlagOut>, ApiError> {
    Ok(Json(f.kill(&auth.audit, &key, q.environment.as_deref()).await?.into()))
}

/// Where the kill switch applies.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KillQuery {
    /// Only this environment; every environment when absent.
    #[param(example = "production")]
    pub environment: Option<String>,
}

/// A flag's history, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VersionList {
    /// Every version of the flag, newest first.
    pub data: Vec<FlagVersion>,
}

/// List a flag's versions
///
/// Every version with who made it, when, the whole document and a diff, newest first.
#[utoipa::path(get, path = "/v1/flags/{key}/versions", tag = "flags", params(("key" = String, Path, description = KEY, example = "new-checkout")),
    responses((status = 200, body = VersionList, description = "The flag's history.")))]
async fn flag_versions(
    State(f): St,
    _auth: Authorized<Platform<FlagsRead>>,
    Path(key): Path<String>,
) -> Result<Json<VersionList>, ApiError> {
    Ok(Json(VersionList { data: f.history(&key).await? }))
}

/// Which version to go back to.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version whose configuration to restore (as a new version).
    pub version: i64,
}

/// Roll a flag back
///
/// Restores an earlier version's configuration, as a new version.
#[utoipa::path(post, path = "/v1/flags/{key}/rollback", tag = "flags", params(("key" = String, Path, description = KEY, example = "new-checkout")), request_body = RollbackRequest,
    responses((status = 200, body = FlagOut, description = "The flag as restored.")))]
async fn rollback_flag(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
    Path(key): Path<String>,
    ApiJson(b): ApiJson<RollbackRequest>,
) -> Result<Json<FlagOut>, ApiError> {
    Ok(Json(f.rollback(&auth.audit, &key, b.version).await?.into()))
}

/// Which environment's configuration to copy where.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyRequest {
    /// The environment to copy from.
    #[schema(example = "staging")]
    pub from: String,
    /// The environment to copy to; its configuration is replaced.
    #[schema(example = "production")]
    pub to: String,
}

/// Copy a flag's configuration between environments
#[utoipa::path(post, path = "/v1/flags/{key}/copy", tag = "flags", params(("key" = String, Path, description = KEY, example = "new-checkout")), request_body = CopyRequest,
    responses((status = 200, body = FlagOut, description = "The flag as changed.")))]
async fn copy_flag(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
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

/// Schedule a flag change
///
/// Stores a change to apply at a time; the scheduler applies it in the same transaction that
/// claims it, on whichever replica gets there first.
#[utoipa::path(post, path = "/v1/flags/{key}/schedules", tag = "flags", params(("key" = String, Path, description = KEY, example = "new-checkout")), request_body = ScheduleCreate,
    responses((status = 201, body = Schedule, description = "The scheduled change.")))]
async fn create_schedule(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
    Path(key): Path<String>,
    ApiJson(b): ApiJson<ScheduleCreate>,
) -> Result<(StatusCode, Json<Schedule>), ApiError> {
    let apply_at =
        parse_rfc3339(&b.apply_at).ok_or_else(|| ApiError::validation("apply_at", "must be an RFC 3339 time"))?;
    let change = ScheduledChange { environment: b.environment, enabled: b.enabled, config: b.config };
    Ok((StatusCode::CREATED, Json(f.schedule(&auth.audit, &key, change, apply_at).await?)))
}

/// A flag's scheduled changes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleList {
    /// Scheduled changes by time, past ones included.
    pub data: Vec<Schedule>,
}

/// List a flag's scheduled changes
#[utoipa::path(get, path = "/v1/flags/{key}/schedules", tag = "flags", params(("key" = String, Path, description = KEY, example = "new-checkout")),
    responses((status = 200, body = ScheduleList, description = "The flag's scheduled changes.")))]
async fn list_schedules(
    State(f): St,
    _auth: Authorized<Platform<FlagsRead>>,
    Path(key): Path<String>,
) -> Result<Json<ScheduleList>, ApiError> {
    Ok(Json(ScheduleList { data: f.schedules(&key).await? }))
}

/// Cancel a scheduled change
#[utoipa::path(delete, path = "/v1/flags/{key}/schedules/{id}", tag = "flags",
    params(("key" = String, Path, description = KEY, example = "new-checkout"), ("id" = String, Path, description = "The schedule's ID.", example = "sch_01jd8x3v5k7m9p2q4r6s8t0w1y")),
    responses((status = 204, description = "Cancelled."), (status = 409, body = Problem, description = "`conflict`: it was applied or cancelled already.")))]
async fn cancel_schedule(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
    Path((key, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = ScheduleId::parse(&id)?;
    f.cancel_schedule(&auth.audit, &key, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Which environment.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EnvQuery {
    /// The environment; `flags.default_environment` when absent.
    #[param(example = "production")]
    pub environment: Option<String>,
}

/// Import from Unleash
///
/// Imports Unleash's client features document (what `/api/client/features` returns) or a delta
/// document into one environment: each feature becomes a new version of the flag of that name.
#[utoipa::path(post, path = "/v1/flags/import", tag = "flags", params(EnvQuery),
    request_body(content = Object, description = "Unleash client features document `{version, features, segments}` or delta document `{events}`. \
        Everything Unleash serves is accepted; what does not work as written (unknown operators, values that do not parse, custom strategies, \
        missing segments or parents, dependencies deeper than one level) is kept, evaluated as Unleash's SDKs do, and listed in `warnings`. \
        An import is one transaction: refused, it changes nothing."),
    responses((status = 200, body = ImportReport, description = "What the import created, changed and removed, and what it kept that does not work as written."),
        (status = 404, body = Problem, description = "`not_found`: no such environment.")))]
async fn import_flags(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
    ApiQuery(q): ApiQuery<EnvQuery>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<ImportReport>, ApiError> {
    let env = f.environment_for(None, q.environment.as_deref())?;
    let parse_err = |e: serde_path_to_error::Error<serde_json::Error>| {
        ApiError::validation(crate::import::pointer_of(e.path()), e.inner().to_string())
    };
    let incoming = if body.get("events").is_some() {
        Incoming::Delta(serde_path_to_error::deserialize::<_, DeltaDocument>(body).map_err(parse_err)?)
    } else {
        Incoming::Full(serde_path_to_error::deserialize::<_, ClientFeatures>(body).map_err(parse_err)?)
    };
    Ok(Json(f.import(&auth.audit, &env, incoming).await?))
}

/// Export to Unleash's format
///
/// The environment's flags as Unleash's client features document, ready for import elsewhere.
#[utoipa::path(get, path = "/v1/flags/export", tag = "flags", params(EnvQuery),
    responses((status = 200, body = Object, description = "Unleash client features document `{version, features, segments}`."),
        (status = 404, body = Problem, description = "`not_found`: no such environment.")))]
async fn export_flags(
    State(f): St,
    _auth: Authorized<Platform<FlagsRead>>,
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
    /// The environment; the key's own, or `flags.default_environment`, when absent.
    #[schema(example = "production")]
    pub environment: Option<String>,
    /// Unleash-style context: `userId`, `sessionId`, `remoteAddress`, `currentTime` and
    /// `properties` (at most 100).
    #[serde(default)]
    #[schema(value_type = Object, example = json!({"userId": "user-42", "properties": {"country": "DE"}}))]
    pub context: Context,
    /// Only these flags; all when absent.
    #[schema(max_items = 1000)]
    pub flags: Option<Vec<String>>,
}

/// Flags one evaluation request may name.
pub const MAX_EVALUATE_FLAGS: usize = 1000;
/// Context properties one evaluation request may carry.
pub const MAX_CONTEXT_PROPERTIES: usize = 100;

/// One flag's answer, with the reason.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EvaluationOut {
    /// The flag's key.
    pub flag: String,
    /// Whether the flag is on for this context.
    pub enabled: bool,
    /// The variant picked: `{name, enabled, payload?}`.
    #[schema(value_type = Object)]
    pub variant: Value,
    /// Why: `DISABLED`, `STATIC`, `TARGETING_MATCH`, `SPLIT`, `DEFAULT` (on, no strategy matched)
    /// or `NOT_FOUND`.
    pub reason: String,
}

/// Every requested flag's answer for one context.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EvaluationList {
    /// The environment the evaluation ran in.
    pub environment: String,
    /// One answer per flag.
    pub data: Vec<EvaluationOut>,
}

/// Evaluate flags with reasons
///
/// Evaluates flags for a context and says why each answered as it did; for debugging targeting.
#[utoipa::path(post, path = "/v1/flags/evaluate", tag = "flags", request_body = EvaluateRequest,
    responses((status = 200, body = EvaluationList, description = "Each flag's answer and reason."),
        (status = 404, body = Problem, description = "`not_found`: no such environment.")))]
async fn evaluate_flags(
    State(f): St,
    auth: Authorized<FlagsEvaluate>,
    ApiJson(b): ApiJson<EvaluateRequest>,
) -> Result<Json<EvaluationList>, ApiError> {
    if let Some(names) = &b.flags {
        runway_core::bounds::items("/flags", names.len(), MAX_EVALUATE_FLAGS)?;
    }
    runway_core::bounds::properties("/context/properties", b.context.properties.0.len(), MAX_CONTEXT_PROPERTIES)?;
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

/// Which usage counts.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Only this flag.
    #[param(example = "new-checkout")]
    pub flag: Option<String>,
    /// Only this environment.
    #[param(example = "production")]
    pub environment: Option<String>,
}

/// Evaluation counts.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageList {
    /// Counts per flag, environment and variant.
    pub data: Vec<UsageRow>,
}

/// Read flag usage
///
/// Evaluation counts per flag, variant and environment (OFREP, and what Unleash SDKs report).
#[utoipa::path(get, path = "/v1/flags/usage", tag = "flags", params(UsageQuery), responses((status = 200, body = UsageList, description = "The counts.")))]
async fn usage(
    State(f): St,
    _auth: Authorized<Platform<FlagsRead>>,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<Json<UsageList>, ApiError> {
    // Counts still in memory are written first, so the report includes this replica's latest.
    f.flush_usage().await?;
    Ok(Json(UsageList { data: f.usage_report(q.flag.as_deref(), q.environment.as_deref()).await? }))
}

/// How long before a flag counts as stale.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StaleQuery {
    /// Days without evaluations, or fully rolled out, before a flag is listed (1 to 3650);
    /// `flags.stale_after_days` when absent.
    #[param(minimum = 1, maximum = 3650)]
    pub days: Option<u32>,
}

/// Longest `days` the stale report looks back.
const MAX_STALE_DAYS: u32 = 3650;

/// Flags that are candidates for removal from code.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StaleList {
    /// The number of days used.
    pub days: u32,
    /// Stale flags, per environment.
    pub data: Vec<StaleFlag>,
}

/// List stale flags
///
/// Flags that are on somewhere but were never evaluated, not evaluated for `days`, or fully
/// rolled out there for `days`: candidates for removal from code.
#[utoipa::path(get, path = "/v1/flags/stale", tag = "flags", params(StaleQuery), responses((status = 200, body = StaleList, description = "The stale flags.")))]
async fn stale(
    State(f): St,
    _auth: Authorized<Platform<FlagsRead>>,
    ApiQuery(q): ApiQuery<StaleQuery>,
) -> Result<Json<StaleList>, ApiError> {
    f.flush_usage().await?;
    let days = q.days.unwrap_or(f.config.stale_after_days);
    if !(1..=MAX_STALE_DAYS).contains(&days) {
        let mut e = ApiError::new(ErrorCode::InvalidQuery, format!("days must be between 1 and {MAX_STALE_DAYS}"));
        e.field = Some("days".into());
        return Err(e);
    }
    Ok(Json(StaleList { days, data: f.stale_report(days).await? }))
}

/// A new flag environment.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentCreate {
    /// The environment's name: a-z, 0-9 and '-'.
    #[schema(example = "qa")]
    pub name: String,
    /// What the environment is for.
    #[serde(default)]
    pub description: String,
}

/// The flag environments.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnvironmentList {
    /// Every environment.
    pub data: Vec<Environment>,
}

/// Create an environment
///
/// Adds a flag environment; flags are off there until configured.
#[utoipa::path(post, path = "/v1/environments", tag = "flags", request_body = EnvironmentCreate,
    responses((status = 201, body = Environment, description = "The new environment."),
        (status = 409, body = Problem, description = "`conflict`: it exists already.")))]
async fn create_environment(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
    ApiJson(b): ApiJson<EnvironmentCreate>,
) -> Result<(StatusCode, Json<Environment>), ApiError> {
    Ok((StatusCode::CREATED, Json(f.create_environment(&auth.audit, &b.name, &b.description).await?)))
}

/// List environments
#[utoipa::path(get, path = "/v1/environments", tag = "flags", responses((status = 200, body = EnvironmentList, description = "Every flag environment.")))]
async fn list_environments(
    State(f): St,
    _auth: Authorized<Platform<FlagsRead>>,
) -> Result<Json<EnvironmentList>, ApiError> {
    Ok(Json(EnvironmentList { data: f.environments().await? }))
}

/// A segment: a named, reusable set of constraints.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentInput {
    /// The segment's name (1 to 200 characters).
    #[schema(example = "beta-testers")]
    pub name: String,
    /// Who the segment is.
    #[serde(default)]
    pub description: String,
    /// Every constraint must hold for a context to be in the segment.
    #[schema(value_type = Vec<crate::model::ConstraintSchema>, max_items = 100)]
    pub constraints: Vec<ConstraintDef>,
}

/// The segments.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SegmentList {
    /// Every segment.
    pub data: Vec<Segment>,
}

/// The `{id}` path parameter of segments.
const SEGMENT: &str = "The segment's number.";

/// Create a segment
///
/// A reusable set of constraints that strategies reference by id.
#[utoipa::path(post, path = "/v1/segments", tag = "flags", request_body = SegmentInput,
    responses((status = 201, body = Segment, description = "The new segment."),
        (status = 409, body = Problem, description = "`conflict`: a segment with this name exists.")))]
async fn create_segment(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
    ApiJson(b): ApiJson<SegmentInput>,
) -> Result<(StatusCode, Json<Segment>), ApiError> {
    Ok((StatusCode::CREATED, Json(f.put_segment(&auth.audit, None, &b.name, &b.description, b.constraints).await?)))
}

/// List segments
#[utoipa::path(get, path = "/v1/segments", tag = "flags", responses((status = 200, body = SegmentList, description = "Every segment.")))]
async fn list_segments(State(f): St, _auth: Authorized<Platform<FlagsRead>>) -> Result<Json<SegmentList>, ApiError> {
    Ok(Json(SegmentList { data: f.segments().await? }))
}

/// Replace a segment
///
/// Replaces the segment; every flag that references it evaluates with the new constraints.
#[utoipa::path(put, path = "/v1/segments/{id}", tag = "flags", params(("id" = i64, Path, description = SEGMENT, example = 1)), request_body = SegmentInput,
    responses((status = 200, body = Segment, description = "The segment as replaced."),
        (status = 409, body = Problem, description = "`conflict`: another segment has this name.")))]
async fn update_segment(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
    Path(id): Path<i64>,
    ApiJson(b): ApiJson<SegmentInput>,
) -> Result<Json<Segment>, ApiError> {
    Ok(Json(f.put_segment(&auth.audit, Some(id), &b.name, &b.description, b.constraints).await?))
}

/// Delete a segment
#[utoipa::path(delete, path = "/v1/segments/{id}", tag = "flags", params(("id" = i64, Path, description = SEGMENT, example = 1)),
    responses((status = 204, description = "Deleted."), (status = 409, body = Problem, description = "`conflict`: flags still reference it.")))]
async fn delete_segment(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    f.delete_segment(&auth.audit, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Which release plans to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PlanQuery {
    /// Only plans of this flag.
    #[param(example = "new-checkout")]
    pub flag: Option<String>,
}

/// Release plans.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReleasePlanList {
    /// The plans, oldest first.
    pub data: Vec<ReleasePlan>,
}

/// The `{id}` path parameter of release plans.
const PLAN: &str = "The release plan's ID.";

/// Start a release plan
///
/// Takes a flag through rollout milestones in one environment: the first at once, the rest
/// after their `wait_secs` or by hand, watched by guards that roll it back when they trip.
#[utoipa::path(post, path = "/v1/release-plans", tag = "flags", request_body = PlanCreate,
    responses((status = 201, body = ReleasePlan, description = "The plan, at its first milestone."),
        (status = 404, body = Problem, description = "`not_found`: no such flag."),
        (status = 409, body = Problem, description = "`conflict`: a plan is already running for this flag and environment.")))]
async fn create_plan(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
    ApiJson(b): ApiJson<PlanCreate>,
) -> Result<(StatusCode, Json<ReleasePlan>), ApiError> {
    Ok((StatusCode::CREATED, Json(f.create_plan(&auth.audit, b).await?)))
}

/// List release plans
#[utoipa::path(get, path = "/v1/release-plans", tag = "flags", params(PlanQuery), responses((status = 200, body = ReleasePlanList, description = "The plans.")))]
async fn list_plans(
    State(f): St,
    _auth: Authorized<Platform<FlagsRead>>,
    ApiQuery(q): ApiQuery<PlanQuery>,
) -> Result<Json<ReleasePlanList>, ApiError> {
    Ok(Json(ReleasePlanList { data: f.plans(q.flag.as_deref()).await? }))
}

/// Get a release plan
#[utoipa::path(get, path = "/v1/release-plans/{id}", tag = "flags", params(("id" = String, Path, description = PLAN, example = "rpl_01jd8x3v5k7m9p2q4r6s8t0w1y")),
    responses((status = 200, body = ReleasePlan, description = "The plan.")))]
async fn get_plan(
    State(f): St,
    _auth: Authorized<Platform<FlagsRead>>,
    Path(id): Path<String>,
) -> Result<Json<ReleasePlan>, ApiError> {
    Ok(Json(f.plan(&ReleasePlanId::parse(&id)?).await?))
}

/// Advance a release plan
///
/// Moves the plan to its next milestone now.
#[utoipa::path(post, path = "/v1/release-plans/{id}/advance", tag = "flags", params(("id" = String, Path, description = PLAN, example = "rpl_01jd8x3v5k7m9p2q4r6s8t0w1y")),
    responses((status = 200, body = ReleasePlan, description = "The plan, at its next milestone."), (status = 409, body = Problem, description = "`conflict`: the plan is not active or has no next milestone.")))]
async fn advance_plan(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
    Path(id): Path<String>,
) -> Result<Json<ReleasePlan>, ApiError> {
    Ok(Json(f.advance_plan(&auth.audit, &ReleasePlanId::parse(&id)?).await?))
}

/// Pause a release plan
///
/// Stops the plan where it is: it no longer moves on by itself.
#[utoipa::path(post, path = "/v1/release-plans/{id}/pause", tag = "flags", params(("id" = String, Path, description = PLAN, example = "rpl_01jd8x3v5k7m9p2q4r6s8t0w1y")),
    responses((status = 200, body = ReleasePlan, description = "The plan, paused."), (status = 409, body = Problem, description = "`conflict`: the plan is not active.")))]
async fn pause_plan(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
    Path(id): Path<String>,
) -> Result<Json<ReleasePlan>, ApiError> {
    Ok(Json(f.set_plan_status(&auth.audit, &ReleasePlanId::parse(&id)?, "paused").await?))
}

/// Resume a release plan
#[utoipa::path(post, path = "/v1/release-plans/{id}/resume", tag = "flags", params(("id" = String, Path, description = PLAN, example = "rpl_01jd8x3v5k7m9p2q4r6s8t0w1y")),
    responses((status = 200, body = ReleasePlan, description = "The plan, active again."), (status = 409, body = Problem, description = "`conflict`: the plan is not paused.")))]
async fn resume_plan(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
    Path(id): Path<String>,
) -> Result<Json<ReleasePlan>, ApiError> {
    Ok(Json(f.set_plan_status(&auth.audit, &ReleasePlanId::parse(&id)?, "active").await?))
}

/// Cancel a release plan
///
/// Stops the plan for good; the flag stays where it is.
#[utoipa::path(post, path = "/v1/release-plans/{id}/cancel", tag = "flags", params(("id" = String, Path, description = PLAN, example = "rpl_01jd8x3v5k7m9p2q4r6s8t0w1y")),
    responses((status = 200, body = ReleasePlan, description = "The plan, cancelled."), (status = 409, body = Problem, description = "`conflict`: the plan has ended already.")))]
async fn cancel_plan(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
    Path(id): Path<String>,
) -> Result<Json<ReleasePlan>, ApiError> {
    Ok(Json(f.set_plan_status(&auth.audit, &ReleasePlanId::parse(&id)?, "cancelled").await?))
}

/// A guard's new state.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardState {
    /// `tripped` rolls the plan back to its last safe milestone; `ok` clears the guard.
    #[schema(example = "tripped")]
    pub state: String,
    /// Why, for the plan and its audit entry.
    #[serde(default)]
    #[schema(example = "error budget burning")]
    pub reason: String,
}

/// Set a guard's state
///
/// Trips a guard (the plan stops and rolls back to its last safe milestone) or clears it.
#[utoipa::path(put, path = "/v1/release-plans/{id}/guards/{name}", tag = "flags",
    params(("id" = String, Path, description = PLAN, example = "rpl_01jd8x3v5k7m9p2q4r6s8t0w1y"), ("name" = String, Path, description = "The guard's name in the plan.", example = "checkout-errors")),
    request_body = GuardState, responses((status = 200, body = ReleasePlan, description = "The plan after the signal.")))]
async fn set_guard(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
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
    f.guard_signal(
        &auth.audit,
        GuardSignal { target: GuardTarget::Named { plan: plan.clone(), guard: name }, firing, reason },
    )
    .await?;
    Ok(Json(f.plan(&plan).await?))
}

/// Alertmanager's webhook payload (version 4), the parts Runway reads.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct AlertmanagerPayload {
    /// The alerts of the notification: `status` (`firing` or `resolved`), `labels`
    /// (`alertname`, and optionally `flag` and `environment`) and `annotations` (`summary`).
    #[serde(default)]
    #[schema(value_type = Vec<Object>, max_items = 1000)]
    pub alerts: Vec<Alert>,
}

/// Alerts one Alertmanager notification may carry, and labels or annotations one alert may carry.
pub const MAX_ALERTS: usize = 1000;
const MAX_ALERT_LABELS: usize = 100;

#[derive(Debug, Deserialize)]
pub struct Alert {
    /// `firing` or `resolved`.
    pub status: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// What an Alertmanager notification did.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertResult {
    /// Plans rolled back by this delivery.
    pub rolled_back: Vec<ReleasePlanId>,
}

/// Receive Alertmanager alerts
///
/// Point an Alertmanager webhook receiver here: a firing alert trips the guards whose
/// `alertname` matches (and whose plan's flag and environment match the alert's labels, when set).
#[utoipa::path(post, path = "/v1/flags/guards/alertmanager", tag = "flags", request_body = AlertmanagerPayload,
    responses((status = 200, body = AlertResult, description = "Which plans were rolled back.")))]
async fn alertmanager(
    State(f): St,
    auth: Authorized<Platform<FlagsWrite>>,
    ApiJson(b): ApiJson<AlertmanagerPayload>,
) -> Result<Json<AlertResult>, ApiError> {
    runway_core::bounds::items("/alerts", b.alerts.len(), MAX_ALERTS)?;
    for (i, a) in b.alerts.iter().enumerate() {
        runway_core::bounds::properties(&format!("/alerts/{i}/labels"), a.labels.len(), MAX_ALERT_LABELS)?;
        runway_core::bounds::properties(&format!("/alerts/{i}/annotations"), a.annotations.len(), MAX_ALERT_LABELS)?;
    }
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
        rolled_back.extend(f.guard_signal(&auth.audit, signal).await?);
    }
    let _ = json!(null);
    Ok(Json(AlertResult { rolled_back }))
}
