//! The SLO API: `/v1/slos…` and `/v1/release-gate…`, with their wire types.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use runway_audit::catalog::{ChangeMeta, DocumentMeta, Stored};
use runway_core::error::Problem;
use runway_core::id::{GateOverrideId, SloId};
use runway_core::{ApiError, ApiJson, ApiQuery, ErrorCode};
use runway_identity::scope::{SlosObserve, SlosRead, SlosWrite};
use runway_identity::{Authorized, Platform};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::eval::{SloAlert, SloStatus};
use crate::gate::{self, Decision, GateOverride, OverrideCreate};
use crate::model::{Slo, SloSpec};
use crate::{Observation, Service};

type St = State<Arc<Service>>;

pub fn router() -> OpenApiRouter<Arc<Service>> {
    OpenApiRouter::new()
        .routes(routes!(list_slos, create_slo))
        .routes(routes!(import_slos))
        .routes(routes!(export_slos))
        .routes(routes!(get_slo, patch_slo, delete_slo))
        .routes(routes!(slo_versions))
        .routes(routes!(rollback_slo))
        .routes(routes!(observe))
        .routes(routes!(slo_status))
        .routes(routes!(slo_alerts))
        .routes(routes!(slo_budget))
        .routes(routes!(release_gate))
        .routes(routes!(list_overrides, create_override))
        .routes(routes!(revoke_override))
}

/// An SLO with where it stands in its history.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SloOut {
    /// The SLO's ID.
    #[schema(value_type = String, example = "slo_01JD8X3R6Q9V2M4T7W1Y5ZB0CE")]
    pub id: SloId,
    #[serde(flatten)]
    pub spec: SloSpec,
    #[serde(flatten)]
    pub meta: DocumentMeta,
}

impl From<Stored<Slo>> for SloOut {
    fn from(s: Stored<Slo>) -> Self {
        SloOut { meta: s.meta(), id: s.doc.id, spec: s.doc.spec }
    }
}

/// SLOs.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SloList {
    /// The SLOs, by ID.
    pub data: Vec<SloOut>,
}

/// Filters of the SLO list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SloFilter {
    /// Only this service's SLOs.
    pub service: Option<String>,
    /// Only SLOs of this environment.
    pub environment: Option<String>,
}

const ID: &str = "The SLO's ID.";

fn slo_id(raw: &str) -> Result<SloId, ApiError> {
    Ok(SloId::parse(raw)?)
}

/// List SLOs
#[utoipa::path(get, path = "/v1/slos", tag = "slos", params(SloFilter),
    responses((status = 200, body = SloList, description = "The SLOs, by ID.")))]
async fn list_slos(
    State(svc): St,
    _auth: Authorized<Platform<SlosRead>>,
    ApiQuery(f): ApiQuery<SloFilter>,
) -> Result<Json<SloList>, ApiError> {
    let data = svc
        .list()
        .await?
        .into_iter()
        .filter(|s| f.service.as_ref().is_none_or(|x| *x == s.doc.spec.service))
        .filter(|s| f.environment.as_ref().is_none_or(|x| *x == s.doc.spec.environment))
        .map(SloOut::from)
        .collect();
    Ok(Json(SloList { data }))
}

/// Create an SLO
///
/// Stores the SLO as version 1, audited on the platform chain. The next evaluation (within
/// `slo.eval_interval_ms`) reads its whole window from the stored records.
#[utoipa::path(post, path = "/v1/slos", tag = "slos", request_body = SloSpec,
    responses((status = 201, body = SloOut, description = "The new SLO."),
        (status = 409, body = Problem, description = "`already_exists`: the service has an SLO of this name."),
        (status = 422, body = Problem, description = "`validation_failed`: `field` is the JSON pointer of what cannot work.")))]
async fn create_slo(
    State(svc): St,
    auth: Authorized<Platform<SlosWrite>>,
    ApiJson(b): ApiJson<SloSpec>,
) -> Result<(StatusCode, Json<SloOut>), ApiError> {
    Ok((StatusCode::CREATED, Json(svc.create(&auth.audit, b).await?.into())))
}

/// Get an SLO
#[utoipa::path(get, path = "/v1/slos/{id}", tag = "slos", params(("id" = String, Path, description = ID)),
    responses((status = 200, body = SloOut, description = "The SLO.")))]
async fn get_slo(
    State(svc): St,
    _auth: Authorized<Platform<SlosRead>>,
    Path(id): Path<String>,
) -> Result<Json<SloOut>, ApiError> {
    Ok(Json(svc.get(&slo_id(&id)?).await?.into()))
}

/// Change an SLO
///
/// A JSON merge patch (RFC 7396) on the SLO's fields: members given replace, `null` removes
/// (back to the default). The result is checked like a new SLO and stored as a new version.
#[utoipa::path(patch, path = "/v1/slos/{id}", tag = "slos", params(("id" = String, Path, description = ID)),
    request_body(content = Object, description = "The fields to change.", content_type = "application/merge-patch+json"),
    responses((status = 200, body = SloOut, description = "The SLO as changed."),
        (status = 409, body = Problem, description = "`already_exists`: the service has another SLO of this name."),
        (status = 422, body = Problem, description = "`validation_failed`: `field` is the JSON pointer of what cannot work.")))]
async fn patch_slo(
    State(svc): St,
    auth: Authorized<Platform<SlosWrite>>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<Value>,
) -> Result<Json<SloOut>, ApiError> {
    if !patch.is_object() {
        return Err(ApiError::validation("", "a merge patch is a JSON object"));
    }
    Ok(Json(svc.patch(&auth.audit, &slo_id(&id)?, &patch).await?.into()))
}

/// Delete an SLO
///
/// Stops evaluating it and resolves its open alerts (a version of its own, so a rollback
/// brings it back).
#[utoipa::path(delete, path = "/v1/slos/{id}", tag = "slos", params(("id" = String, Path, description = ID)),
    responses((status = 204, description = "Deleted.")))]
async fn delete_slo(
    State(svc): St,
    auth: Authorized<Platform<SlosWrite>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    svc.delete(&auth.audit, &slo_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One version of an SLO.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SloVersionOut {
    #[serde(flatten)]
    pub change: ChangeMeta,
    /// The SLO as of this version.
    pub slo: SloSpec,
}

/// An SLO's history.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SloVersions {
    /// Newest first.
    pub data: Vec<SloVersionOut>,
}

/// List an SLO's versions
#[utoipa::path(get, path = "/v1/slos/{id}/versions", tag = "slos", params(("id" = String, Path, description = ID)),
    responses((status = 200, body = SloVersions, description = "Every version, newest first.")))]
async fn slo_versions(
    State(svc): St,
    _auth: Authorized<Platform<SlosRead>>,
    Path(id): Path<String>,
) -> Result<Json<SloVersions>, ApiError> {
    let data = svc
        .versions(&slo_id(&id)?)
        .await?
        .into_iter()
        .map(|v| SloVersionOut { change: v.meta(), slo: v.doc.spec })
        .collect();
    Ok(Json(SloVersions { data }))
}

/// Which version to restore.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SloRollback {
    /// The version whose SLO becomes current again (as a new version).
    pub version: i64,
}

/// Roll an SLO back
#[utoipa::path(post, path = "/v1/slos/{id}/rollback", tag = "slos", params(("id" = String, Path, description = ID)), request_body = SloRollback,
    responses((status = 200, body = SloOut, description = "The SLO as restored."),
        (status = 409, body = Problem, description = "`already_exists`: the restored name is taken by another SLO."),
        (status = 422, body = Problem, description = "`validation_failed`: the old version no longer works (a route it names is gone).")))]
async fn rollback_slo(
    State(svc): St,
    auth: Authorized<Platform<SlosWrite>>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<SloRollback>,
) -> Result<Json<SloOut>, ApiError> {
    Ok(Json(svc.rollback(&auth.audit, &slo_id(&id)?, b.version).await?.into()))
}

/// Pushed counts.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Observations {
    /// One entry per minute and source (at most 1000, `MAX_OBSERVATIONS`).
    #[schema(max_items = 1000)]
    pub observations: Vec<Observation>,
}

/// What was stored.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ObservationsAccepted {
    /// Observations stored (each replacing an earlier report of its minute and source).
    pub accepted: usize,
}

/// Push good and total counts
///
/// For SLOs with a `pushed` SLI. Idempotent per minute and source; counts up to
/// `slo.late_minutes` late are folded into their minute. All or nothing.
#[utoipa::path(post, path = "/v1/slos/{id}/observations", tag = "slos", params(("id" = String, Path, description = ID)), request_body = Observations,
    responses((status = 202, body = ObservationsAccepted, description = "Stored; the next evaluation reads them."),
        (status = 409, body = Problem, description = "`conflict`: the SLO reads the gateway's records, not pushed counts."),
        (status = 422, body = Problem, description = "`validation_failed`: `field` points at the refused observation.")))]
async fn observe(
    State(svc): St,
    _auth: Authorized<Platform<SlosObserve>>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<Observations>,
) -> Result<(StatusCode, Json<ObservationsAccepted>), ApiError> {
    let accepted = svc.observe(&slo_id(&id)?, &b.observations).await?;
    Ok((StatusCode::ACCEPTED, Json(ObservationsAccepted { accepted })))
}

/// Availability in Pyrra's shape.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Availability {
    /// Good over all, in percent.
    pub percentage: Option<f64>,
    /// All events in the window.
    pub total: f64,
    /// Bad events in the window.
    pub errors: f64,
}

/// The budget in Pyrra's shape.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PyrraBudget {
    /// The allowed error rate (1 − objective).
    pub total: f64,
    /// The share of the budget left (1 untouched, below 0 overspent).
    pub remaining: Option<f64>,
    /// Bad events the objective allows over the events seen.
    pub max: f64,
}

/// One series' status: Pyrra's availability and budget, and the full evaluation.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusOut {
    /// The tenant, for per-tenant SLOs.
    pub tenant: Option<String>,
    /// Good and bad events in the compliance window.
    pub availability: Availability,
    /// The error budget.
    pub budget: PyrraBudget,
    /// Everything the last evaluation worked out.
    pub evaluation: SloStatus,
}

/// An SLO's status.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SloStatusList {
    /// The SLO's ID.
    #[schema(value_type = String)]
    pub slo: SloId,
    /// One entry (or one per tenant, for per-tenant SLOs); empty until the first evaluation.
    pub data: Vec<StatusOut>,
}

/// Get an SLO's status
///
/// As of the last evaluation: availability with totals and errors, the budget, burn rates
/// per window and each alert condition.
#[utoipa::path(get, path = "/v1/slos/{id}/status", tag = "slos", params(("id" = String, Path, description = ID)),
    responses((status = 200, body = SloStatusList, description = "The status.")))]
async fn slo_status(
    State(svc): St,
    _auth: Authorized<Platform<SlosRead>>,
    Path(id): Path<String>,
) -> Result<Json<SloStatusList>, ApiError> {
    let id = slo_id(&id)?;
    let slo = svc.get(&id).await?.doc;
    let mut all = crate::eval::statuses(&svc, std::slice::from_ref(&id)).await?;
    let data = all
        .remove(id.as_str())
        .unwrap_or_default()
        .into_iter()
        .map(|s| StatusOut {
            tenant: s.tenant.clone(),
            availability: Availability { percentage: s.sli.map(|x| x * 100.0), total: s.total, errors: s.budget.spent },
            budget: PyrraBudget {
                total: 1.0 - slo.spec.target(),
                remaining: s.budget.remaining,
                max: s.budget.allowed,
            },
            evaluation: s,
        })
        .collect();
    Ok(Json(SloStatusList { slo: id, data }))
}

/// An SLO's alerts.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SloAlerts {
    /// Newest first.
    pub data: Vec<SloAlert>,
}

/// Paging of the alert history.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// How many, newest first (1 to 500, default 100).
    pub limit: Option<i64>,
}

/// List an SLO's alerts
///
/// Every firing, open or resolved, newest first.
#[utoipa::path(get, path = "/v1/slos/{id}/alerts", tag = "slos", params(("id" = String, Path, description = ID), AlertQuery),
    responses((status = 200, body = SloAlerts, description = "The alerts.")))]
async fn slo_alerts(
    State(svc): St,
    _auth: Authorized<Platform<SlosRead>>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<AlertQuery>,
) -> Result<Json<SloAlerts>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::query("limit", "1 to 500"));
    }
    let id = slo_id(&id)?;
    svc.get(&id).await?;
    Ok(Json(SloAlerts { data: crate::eval::alerts(&svc, &id, limit).await? }))
}

/// Which service and environment the gate (and its overrides) are about.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GateQuery {
    /// The service about to be released.
    pub service: String,
    /// The environment it goes to (default `production`, as an SLO's).
    pub environment: Option<String>,
}

impl GateQuery {
    fn environment(&self) -> &str {
        self.environment.as_deref().unwrap_or(crate::model::DEFAULT_ENVIRONMENT)
    }
}

/// One SLO's part in the gate's answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GateSlo {
    /// The SLO's ID.
    #[schema(value_type = String)]
    pub id: SloId,
    /// The SLO's name.
    pub name: String,
    /// Whether a spent budget or a page denies (a key SLO) or only warns.
    pub key: bool,
    /// This SLO's verdict.
    pub decision: Decision,
    /// Why, one line per finding.
    pub reasons: Vec<String>,
    /// The last evaluation (one per tenant, for per-tenant SLOs).
    pub status: Vec<SloStatus>,
}

/// The release gate's answer. Always 200, so Argo Rollouts' web metric provider can read it:
/// `successCondition: result.decision != "deny"`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GateAnswer {
    /// The service asked about.
    pub service: String,
    /// The environment asked about.
    pub environment: String,
    /// `allow`, `warn` or `deny`: the worst of the SLOs', unless an override holds.
    pub decision: Decision,
    /// `decision == allow`, for tools that want a boolean.
    pub allow: bool,
    /// Why, one line per finding.
    pub reasons: Vec<String>,
    /// The override in force, if one holds.
    pub r#override: Option<GateOverride>,
    /// Each SLO of the service and environment, with its verdict.
    pub slos: Vec<GateSlo>,
}

/// Ask the release gate
///
/// `allow`, `warn` or `deny` for releasing `service` to `environment` now, after Google's
/// example error-budget policy: deny when a key SLO's budget is spent or a page alert fires;
/// warn below `warn_below_budget` of the budget, on a ticket alert or without data; allow
/// otherwise. An override in force replaces the answer and says so.
#[utoipa::path(get, path = "/v1/release-gate", tag = "slos", params(GateQuery),
    responses((status = 200, body = GateAnswer, description = "The answer, with reasons and every SLO's state.")))]
async fn release_gate(
    State(svc): St,
    _auth: Authorized<Platform<SlosRead>>,
    ApiQuery(q): ApiQuery<GateQuery>,
) -> Result<Json<GateAnswer>, ApiError> {
    Ok(Json(svc.gate(&q.service, q.environment()).await?))
}

/// Release-gate overrides.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OverrideList {
    /// Newest first (at most 100).
    pub data: Vec<GateOverride>,
}

/// List release-gate overrides
#[utoipa::path(get, path = "/v1/release-gate/overrides", tag = "slos", params(GateQuery),
    responses((status = 200, body = OverrideList, description = "The overrides, newest first.")))]
async fn list_overrides(
    State(svc): St,
    _auth: Authorized<Platform<SlosRead>>,
    ApiQuery(q): ApiQuery<GateQuery>,
) -> Result<Json<OverrideList>, ApiError> {
    Ok(Json(OverrideList { data: gate::overrides(svc.store(), &q.service, q.environment()).await? }))
}

/// Override the release gate
///
/// Until it expires or is revoked, the gate answers `decision` for the service and
/// environment, naming the override, its actor and reason. Audited.
#[utoipa::path(post, path = "/v1/release-gate/overrides", tag = "slos", request_body = OverrideCreate,
    responses((status = 201, body = GateOverride, description = "The override, in force."),
        (status = 422, body = Problem, description = "`validation_failed`: `field` names what cannot work.")))]
async fn create_override(
    State(svc): St,
    auth: Authorized<Platform<SlosWrite>>,
    ApiJson(b): ApiJson<OverrideCreate>,
) -> Result<(StatusCode, Json<GateOverride>), ApiError> {
    Ok((StatusCode::CREATED, Json(gate::create_override(svc.store(), &**svc.clock(), &auth.audit, &b).await?)))
}

/// Revoke a release-gate override
#[utoipa::path(delete, path = "/v1/release-gate/overrides/{id}", tag = "slos", params(("id" = String, Path, description = "The override's ID.")),
    responses((status = 204, description = "Revoked.")))]
async fn revoke_override(
    State(svc): St,
    auth: Authorized<Platform<SlosWrite>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = GateOverrideId::parse(&id)?;
    gate::revoke_override(svc.store(), &**svc.clock(), &auth.audit, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

impl Service {
    /// The release gate's answer for a service and environment.
    pub async fn gate(&self, service: &str, environment: &str) -> Result<GateAnswer, ApiError> {
        let slos: Vec<Slo> = self
            .list()
            .await?
            .into_iter()
            .map(|s| s.doc)
            .filter(|s| s.spec.service == service && s.spec.environment == environment)
            .collect();
        let ids: Vec<SloId> = slos.iter().map(|s| s.id.clone()).collect();
        let mut statuses = crate::eval::statuses(self, &ids).await?;
        let mut decision = Decision::Allow;
        let mut reasons = Vec::new();
        let mut parts = Vec::new();
        if slos.is_empty() {
            decision = Decision::Warn;
            reasons.push(format!("no SLO watches service `{service}` in `{environment}`"));
        }
        for slo in slos {
            let status = statuses.remove(slo.id.as_str()).unwrap_or_default();
            let (mut d, mut why) =
                if status.is_empty() { gate::judge(&slo.spec, None) } else { (Decision::Allow, Vec::new()) };
            for s in &status {
                let (sd, sw) = gate::judge(&slo.spec, Some(s));
                d = d.max(sd);
                why.extend(sw);
            }
            decision = decision.max(d);
            reasons.extend(why.iter().cloned());
            parts.push(GateSlo {
                id: slo.id,
                name: slo.spec.name,
                key: slo.spec.key,
                decision: d,
                reasons: why,
                status,
            });
        }
        let over = gate::active_override(&self.store, self.clock.now_micros(), service, environment).await?;
        if let Some(o) = &over {
            reasons.insert(
                0,
                format!(
                    "overridden to `{}` by {} until {}: {} (without it: `{}`)",
                    o.decision.as_str(),
                    o.actor,
                    o.expires_at,
                    o.reason,
                    decision.as_str()
                ),
            );
            decision = o.decision;
        }
        metrics::counter!("runway_release_gate_answers_total", "decision" => decision.as_str()).increment(1);
        Ok(GateAnswer {
            service: service.to_owned(),
            environment: environment.to_owned(),
            decision,
            allow: decision == Decision::Allow,
            reasons,
            r#override: over,
            slos: parts,
        })
    }
}

/// How to import.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Keep SLIs of metric sources Runway cannot read (Prometheus, Datadog, …) as pushed SLIs,
    /// their queries as descriptions, instead of refusing them.
    #[serde(default)]
    pub pushed: bool,
    /// Only check: nothing is created.
    #[serde(default)]
    pub dry_run: bool,
}

/// What an import made.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportResult {
    /// The SLOs created (empty on a dry run).
    pub created: Vec<SloOut>,
    /// On a dry run: the SLOs that would be created.
    pub would_create: Vec<SloSpec>,
    /// What was read but not kept (notification targets, data sources, services) or kept
    /// differently (a foreign metric source as a pushed SLI).
    pub warnings: Vec<String>,
}

fn is_yaml(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .is_some_and(|m| matches!(m.as_str(), "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml"))
}

/// The documents of a YAML stream (each an object or a list of objects).
pub fn parse_yaml(text: &str) -> Result<Vec<Value>, ApiError> {
    let mut docs = Vec::new();
    for d in yaml_serde::Deserializer::from_str(text) {
        let v =
            Value::deserialize(d).map_err(|e| ApiError::new(ErrorCode::MalformedBody, format!("invalid YAML: {e}")))?;
        docs.push(v);
    }
    Ok(crate::openslo::flatten(docs))
}

/// Import OpenSLO documents
///
/// OpenSLO v1 `SLO`s (with their `SLI`, `AlertPolicy` and `AlertCondition` documents, inline
/// or by reference) become Runway SLOs, each audited. The body is YAML (one or more documents,
/// each an object or a list) or JSON (an object or an array). Every SLO is checked before any
/// is created; what cannot be represented is a 422 whose `field` is `/<document index><path>`.
#[utoipa::path(post, path = "/v1/slos/import", tag = "slos", params(ImportQuery),
    request_body(content = String, description = "OpenSLO v1 documents.", content_type = "application/yaml"),
    responses((status = 201, body = ImportResult, description = "The SLOs created."),
        (status = 200, body = ImportResult, description = "A dry run: what would be created."),
        (status = 400, body = Problem, description = "`malformed_body`: the YAML or JSON does not parse."),
        (status = 409, body = Problem, description = "`already_exists`: an SLO of the same service and name exists."),
        (status = 415, body = Problem, description = "`unsupported_media_type`: neither YAML nor JSON."),
        (status = 422, body = Problem, description = "`validation_failed`: a document cannot be represented; `field` names it.")))]
async fn import_slos(
    State(svc): St,
    auth: Authorized<Platform<SlosWrite>>,
    ApiQuery(q): ApiQuery<ImportQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<ImportResult>), ApiError> {
    let docs = if runway_core::json::is_json_media_type(headers.get(header::CONTENT_TYPE)) {
        crate::openslo::flatten(vec![runway_core::json::parse_json::<Value>(&body)?])
    } else if is_yaml(&headers) {
        let text =
            std::str::from_utf8(&body).map_err(|_| ApiError::new(ErrorCode::MalformedBody, "the YAML is not UTF-8"))?;
        parse_yaml(text)?
    } else {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send OpenSLO documents as application/yaml or application/json",
        ));
    };
    if docs.len() > 1000 {
        return Err(ApiError::validation("", "at most 1000 documents per import"));
    }
    let (created, would, warnings) = svc.import(&auth.audit, &docs, q.pushed, q.dry_run).await?;
    let status = if q.dry_run { StatusCode::OK } else { StatusCode::CREATED };
    Ok((
        status,
        Json(ImportResult { created: created.into_iter().map(SloOut::from).collect(), would_create: would, warnings }),
    ))
}

/// What to export.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `openslo` (OpenSLO v1 `SLO` documents, the default) or `prometheus` (recording and
    /// alerting rules equivalent to Sloth's).
    pub format: Option<String>,
    /// Only this service's SLOs.
    pub service: Option<String>,
}

/// An export as JSON: the documents and what could not be exported as asked.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExportOut {
    /// OpenSLO v1 documents, one per SLO; or one Prometheus rule file (`{"groups": …}`).
    #[schema(value_type = Vec<Object>)]
    pub documents: Vec<Value>,
    /// SLOs exported otherwise than asked (alerts on Runway's gauges instead of rules).
    pub warnings: Vec<String>,
}

/// The YAML export: one document, a list of OpenSLO documents or a Prometheus rule file.
pub struct YamlExport;

impl utoipa::PartialSchema for YamlExport {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::SchemaType::AnyValue)
            .description(Some("A YAML document: a list of OpenSLO v1 documents, or a Prometheus rule file."))
            .into()
    }
}

impl utoipa::ToSchema for YamlExport {}

/// Export SLOs as OpenSLO or Prometheus rules
///
/// YAML by default (`Accept: application/json` for JSON): a list of OpenSLO v1 documents, one
/// per SLO, or a Prometheus rule file (`groups`). SLIs Prometheus cannot compute from the
/// gateway's metrics (pushed counts, 429s counted as bad, plans) get alerts on Runway's
/// `runway_slo_burn_rate` gauges instead, and a warning (a YAML comment; `warnings` in JSON).
#[utoipa::path(get, path = "/v1/slos/export", tag = "slos", params(ExportQuery),
    responses((status = 200, description = "The export.",
        content((YamlExport = "application/yaml"), (ExportOut = "application/json")))))]
async fn export_slos(
    State(svc): St,
    _auth: Authorized<Platform<SlosRead>>,
    ApiQuery(q): ApiQuery<ExportQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let slos: Vec<Slo> = svc
        .list()
        .await?
        .into_iter()
        .map(|s| s.doc)
        .filter(|s| q.service.as_ref().is_none_or(|x| *x == s.spec.service))
        .collect();
    let mut warnings = Vec::new();
    let documents: Vec<Value> = match q.format.as_deref().unwrap_or("openslo") {
        "openslo" => slos.iter().map(|s| crate::openslo::export(s.id.as_str(), &s.spec)).collect(),
        "prometheus" => {
            let mut groups = Vec::new();
            for s in &slos {
                let (g, w) = crate::prom::rules(s);
                groups.extend(g);
                warnings.extend(w);
            }
            vec![serde_json::json!({"groups": groups})]
        }
        other => return Err(ApiError::query("format", format!("`{other}`: `openslo` or `prometheus`"))),
    };
    let wants_json =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/json"));
    let out = ExportOut { documents, warnings };
    if wants_json {
        return Ok(Json(out).into_response());
    }
    let text = export_yaml(&out, q.format.as_deref() == Some("prometheus"))?;
    Ok(([(header::CONTENT_TYPE, "application/yaml")], text).into_response())
}

/// An export as one YAML document (the rule file, or the list of OpenSLO documents, which
/// OpenSLO tools and the import read alike), each warning first as a comment.
pub fn export_yaml(out: &ExportOut, rule_file: bool) -> Result<String, ApiError> {
    let mut text = String::new();
    for w in &out.warnings {
        text.push_str(&format!("# warning: {w}\n"));
    }
    let doc = match (rule_file, out.documents.first()) {
        (true, Some(d)) => d.clone(),
        _ => Value::Array(out.documents.clone()),
    };
    text.push_str(&yaml_serde::to_string(&doc).map_err(ApiError::internal)?);
    Ok(text)
}

/// The range and step of a budget series.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BudgetQuery {
    /// The first point (RFC 3339); default: one compliance window (at most 90 days) before `to`.
    pub from: Option<String>,
    /// The last point (RFC 3339); default: now.
    pub to: Option<String>,
    /// Seconds between points, whole minutes (default: the range over 200, at least 60).
    pub step: Option<i64>,
    /// For a per-tenant SLO, one tenant's budget (its ID); default: all tenants together.
    pub tenant: Option<String>,
}

/// Get an SLO's budget over time
///
/// For charts: at each step from `from` to `to`, the SLI and the budget left over the
/// compliance window ending there, and the burn rate over the step (at most 1440 points over
/// at most 90 days).
#[utoipa::path(get, path = "/v1/slos/{id}/budget", tag = "slos", params(("id" = String, Path, description = ID), BudgetQuery),
    responses((status = 200, body = crate::budget::BudgetSeries, description = "The series, oldest first.")))]
async fn slo_budget(
    State(svc): St,
    _auth: Authorized<Platform<SlosRead>>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<BudgetQuery>,
) -> Result<Json<crate::budget::BudgetSeries>, ApiError> {
    let id = slo_id(&id)?;
    let time = |v: &Option<String>, name: &str| -> Result<Option<i64>, ApiError> {
        Ok(runway_core::json::query_time(v.as_deref(), name)?.map(|us| us.div_euclid(1_000_000)))
    };
    let to = time(&q.to, "to")?.unwrap_or_else(|| svc.clock().now_micros().div_euclid(1_000_000));
    let from = match time(&q.from, "from")? {
        Some(f) => f,
        None => {
            let slo = svc.get(&id).await?.doc;
            let minutes = slo.spec.compliance()?.minutes(to.div_euclid(60));
            to - (minutes * 60).min(crate::budget::MAX_RANGE_DAYS * 86_400)
        }
    };
    let step = q.step.unwrap_or_else(|| (((to - from) / 200).max(60) / 60) * 60);
    Ok(Json(svc.budget(&id, q.tenant.as_deref(), from, to, step).await?))
}
