//! The gateway's management API (`/v1/gateway/…`); wire types stay here, apart from the stored
//! routes.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use runway_core::config::RouteConfig;
use runway_core::error::Problem;
use runway_core::{ApiError, ApiJson, ApiQuery};
use runway_identity::scope::{GatewayRead, GatewayWrite};
use runway_identity::{Authorized, Platform};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Gateway;
use crate::catalog::{self, Edit, Stored};
use crate::documents::{OpenApiDocument, PolicyDocument};
use runway_audit::catalog::{ChangeMeta, DocumentMeta};

type St = State<Arc<Gateway>>;

pub fn router() -> OpenApiRouter<Arc<Gateway>> {
    OpenApiRouter::new()
        .routes(routes!(list_routes, create_route))
        .routes(routes!(get_route, replace_route, delete_route))
        .routes(routes!(route_versions))
        .routes(routes!(rollback_route))
        .routes(routes!(list_policies, create_policy))
        .routes(routes!(get_policy, replace_policy, delete_policy))
        .routes(routes!(policy_versions))
        .routes(routes!(rollback_policy))
        .routes(routes!(list_openapi, create_openapi))
        .routes(routes!(get_openapi, replace_openapi, delete_openapi))
        .routes(routes!(openapi_versions))
        .routes(routes!(rollback_openapi))
        .routes(routes!(read_sli))
        .routes(routes!(read_quota))
}

/// Where a route is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RouteSource {
    /// `[[gateway.routes]]` in `runway.toml`: read-only through the API.
    Config,
    /// Created through the API: versioned, audited, rolled back.
    Api,
}

/// A gateway route as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RouteOut {
    #[serde(flatten)]
    pub route: RouteConfig,
    /// Where the route is declared: `config` (read-only here) or `api`.
    pub source: RouteSource,
    /// The current version (API routes; absent for declared ones).
    pub version: Option<i64>,
    /// When the route was created (RFC 3339; API routes).
    pub created_at: Option<String>,
    /// When it last changed (RFC 3339; API routes).
    pub updated_at: Option<String>,
}

impl From<Stored<RouteConfig>> for RouteOut {
    fn from(s: Stored<RouteConfig>) -> Self {
        RouteOut {
            route: s.doc,
            source: RouteSource::Api,
            version: Some(s.version),
            created_at: Some(runway_core::clock::rfc3339(s.created_at)),
            updated_at: Some(runway_core::clock::rfc3339(s.updated_at)),
        }
    }
}

fn declared(r: &RouteConfig) -> RouteOut {
    RouteOut { route: r.clone(), source: RouteSource::Config, version: None, created_at: None, updated_at: None }
}

/// Every route, declared ones first.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RouteList {
    /// The routes, declared ones first.
    pub data: Vec<RouteOut>,
    /// The stored revision this replica serves; moves with every change through the API.
    pub revision: i64,
}

/// One entry of a route's history.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RouteVersionOut {
    /// The version number, counting from 1.
    pub version: i64,
    /// `created`, `updated`, `deleted` or `rolled_back`.
    #[schema(example = "updated")]
    pub action: String,
    /// Who made it: `<kind>:<id>` of the credential.
    #[schema(example = "admin:admin")]
    pub actor: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// The whole route as of this version (a deletion shows the route it removed).
    pub route: RouteConfig,
}

/// A route's history, newest first.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RouteVersionList {
    /// The versions, newest first.
    pub data: Vec<RouteVersionOut>,
}

/// Which version to go back to.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// The version whose document to restore (as a new version; a deleted route comes back).
    pub version: i64,
}

/// The `{name}` path parameter.
const NAME: &str = "The route's name.";

/// List gateway routes
///
/// The routes declared in `runway.toml` and those created through the API.
#[utoipa::path(get, path = "/v1/gateway/routes", tag = "gateway",
    responses((status = 200, body = RouteList, description = "Every route.")))]
async fn list_routes(State(gw): St, _auth: Authorized<Platform<GatewayRead>>) -> Result<Json<RouteList>, ApiError> {
    let loaded = catalog::load(gw.store()).await?;
    let (revision, stored) = (loaded.revision, loaded.routes);
    let mut data: Vec<RouteOut> = gw.declared().iter().map(declared).collect();
    data.extend(stored.into_iter().filter(|s| !gw.declared().iter().any(|d| d.name == s.doc.name)).map(RouteOut::from));
    Ok(Json(RouteList { data, revision }))
}

/// Create a gateway route
///
/// Stores the route as version 1, audited on the platform chain, and serves it on this replica
/// at once and on every other within `gateway.poll_interval_ms`, without dropping connections.
#[utoipa::path(post, path = "/v1/gateway/routes", tag = "gateway", request_body = RouteConfig,
    responses((status = 201, body = RouteOut, description = "The new route."),
        (status = 409, body = Problem, description = "`conflict`: a route of this name exists (or is declared in runway.toml)."),
        (status = 422, body = Problem, description = "`validation_failed`: `field` is the JSON pointer of what cannot work.")))]
async fn create_route(
    State(gw): St,
    auth: Authorized<Platform<GatewayWrite>>,
    ApiJson(b): ApiJson<RouteConfig>,
) -> Result<(StatusCode, Json<RouteOut>), ApiError> {
    let name = b.name.clone();
    Ok((StatusCode::CREATED, Json(gw.change_route(&auth.audit, &name, Edit::Create(b)).await?.into())))
}

/// Get a gateway route
#[utoipa::path(get, path = "/v1/gateway/routes/{name}", tag = "gateway", params(("name" = String, Path, description = NAME, example = "orders")),
    responses((status = 200, body = RouteOut, description = "The route.")))]
async fn get_route(
    State(gw): St,
    _auth: Authorized<Platform<GatewayRead>>,
    Path(name): Path<String>,
) -> Result<Json<RouteOut>, ApiError> {
    if let Some(d) = gw.declared().iter().find(|d| d.name == name) {
        return Ok(Json(declared(d)));
    }
    Ok(Json(catalog::get::<catalog::Routes>(gw.store(), &name).await?.into()))
}

/// Replace a gateway route
///
/// Writes the whole route as a new version; `name` must be the one in the path.
#[utoipa::path(put, path = "/v1/gateway/routes/{name}", tag = "gateway", params(("name" = String, Path, description = NAME, example = "orders")), request_body = RouteConfig,
    responses((status = 200, body = RouteOut, description = "The route as changed."),
        (status = 409, body = Problem, description = "`conflict`: the route is declared in runway.toml."),
        (status = 422, body = Problem, description = "`validation_failed`: `field` is the JSON pointer of what cannot work.")))]
async fn replace_route(
    State(gw): St,
    auth: Authorized<Platform<GatewayWrite>>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<RouteConfig>,
) -> Result<Json<RouteOut>, ApiError> {
    Ok(Json(gw.change_route(&auth.audit, &name, Edit::Replace(b)).await?.into()))
}

/// Delete a gateway route
///
/// Stops serving the route (a version of its own, so a rollback can bring it back).
#[utoipa::path(delete, path = "/v1/gateway/routes/{name}", tag = "gateway", params(("name" = String, Path, description = NAME, example = "orders")),
    responses((status = 204, description = "Deleted.")))]
async fn delete_route(
    State(gw): St,
    auth: Authorized<Platform<GatewayWrite>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    gw.change_route(&auth.audit, &name, Edit::Delete).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List a gateway route's versions
#[utoipa::path(get, path = "/v1/gateway/routes/{name}/versions", tag = "gateway", params(("name" = String, Path, description = NAME, example = "orders")),
    responses((status = 200, body = RouteVersionList, description = "The route's history, newest first.")))]
async fn route_versions(
    State(gw): St,
    _auth: Authorized<Platform<GatewayRead>>,
    Path(name): Path<String>,
) -> Result<Json<RouteVersionList>, ApiError> {
    let data = catalog::history::<catalog::Routes>(gw.store(), &name)
        .await?
        .into_iter()
        .map(|v| RouteVersionOut {
            version: v.version,
            action: v.action,
            actor: v.actor,
            created_at: runway_core::clock::rfc3339(v.created_at),
            route: v.doc,
        })
        .collect();
    Ok(Json(RouteVersionList { data }))
}

/// Roll a gateway route back
///
/// Restores an earlier version's document as a new version; a deleted route comes back.
#[utoipa::path(post, path = "/v1/gateway/routes/{name}/rollback", tag = "gateway", params(("name" = String, Path, description = NAME, example = "orders")), request_body = Rollback,
    responses((status = 200, body = RouteOut, description = "The route as restored.")))]
async fn rollback_route(
    State(gw): St,
    auth: Authorized<Platform<GatewayWrite>>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<Rollback>,
) -> Result<Json<RouteOut>, ApiError> {
    Ok(Json(gw.change_route(&auth.audit, &name, Edit::Rollback(b.version)).await?.into()))
}

/// A gateway policy kept through the API.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyOut {
    #[serde(flatten)]
    pub policy: PolicyDocument,
    #[serde(flatten)]
    pub meta: DocumentMeta,
}

impl From<Stored<PolicyDocument>> for PolicyOut {
    fn from(s: Stored<PolicyDocument>) -> Self {
        PolicyOut { meta: s.meta(), policy: s.doc }
    }
}

/// The policies kept through the API, and the names of those declared in `runway.toml`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyList {
    /// The policies kept through the API, by name.
    pub data: Vec<PolicyOut>,
    /// The names of `gateway.policies` (files; read-only here).
    pub declared: Vec<String>,
}

/// One entry of a policy's history.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyVersionOut {
    #[serde(flatten)]
    pub change: ChangeMeta,
    /// The whole policy as of this version (a deletion shows the policy it removed).
    pub policy: PolicyDocument,
}

/// A policy's history, newest first.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyVersionList {
    /// The versions, newest first.
    pub data: Vec<PolicyVersionOut>,
}

/// An OpenAPI document kept through the API.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OpenApiOut {
    #[serde(flatten)]
    pub openapi: OpenApiDocument,
    #[serde(flatten)]
    pub meta: DocumentMeta,
}

impl From<Stored<OpenApiDocument>> for OpenApiOut {
    fn from(s: Stored<OpenApiDocument>) -> Self {
        OpenApiOut { meta: s.meta(), openapi: s.doc }
    }
}

/// The OpenAPI documents kept through the API.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OpenApiList {
    /// The documents, by name.
    pub data: Vec<OpenApiOut>,
}

/// One entry of an OpenAPI document's history.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OpenApiVersionOut {
    #[serde(flatten)]
    pub change: ChangeMeta,
    /// The whole document as of this version (a deletion shows the one it removed).
    pub openapi: OpenApiDocument,
}

/// An OpenAPI document's history, newest first.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OpenApiVersionList {
    /// The versions, newest first.
    pub data: Vec<OpenApiVersionOut>,
}

/// The `{name}` path parameter of policies.
const POLICY: &str = "The policy's name.";
/// The `{name}` path parameter of OpenAPI documents.
const DOCUMENT: &str = "The OpenAPI document's name.";

/// List gateway policies
///
/// The Rego policies kept through the API, and the names of those declared in `runway.toml`.
#[utoipa::path(get, path = "/v1/gateway/policies", tag = "gateway",
    responses((status = 200, body = PolicyList, description = "Every policy.")))]
async fn list_policies(State(gw): St, _auth: Authorized<Platform<GatewayRead>>) -> Result<Json<PolicyList>, ApiError> {
    let data = catalog::list::<catalog::Policies>(gw.store()).await?.into_iter().map(PolicyOut::from).collect();
    Ok(Json(PolicyList { data, declared: gw.declared_policy_names() }))
}

/// Create a gateway policy
///
/// Compiles the Rego module (`package runway.gateway` with an `allow` rule) and runs its own
/// `test_*` rules; stores it as version 1 when they pass, audited on the platform chain. Routes
/// name it in `policies`.
#[utoipa::path(post, path = "/v1/gateway/policies", tag = "gateway", request_body = PolicyDocument,
    responses((status = 201, body = PolicyOut, description = "The new policy."),
        (status = 409, body = Problem, description = "`conflict`: a policy of this name exists (or is declared in runway.toml)."),
        (status = 422, body = Problem, description = "`validation_failed`: the source does not compile or its tests fail (`detail` says which).")))]
async fn create_policy(
    State(gw): St,
    auth: Authorized<Platform<GatewayWrite>>,
    ApiJson(b): ApiJson<PolicyDocument>,
) -> Result<(StatusCode, Json<PolicyOut>), ApiError> {
    let name = b.name.clone();
    Ok((StatusCode::CREATED, Json(gw.change_policy(&auth.audit, &name, Edit::Create(b)).await?.into())))
}

/// Get a gateway policy
#[utoipa::path(get, path = "/v1/gateway/policies/{name}", tag = "gateway", params(("name" = String, Path, description = POLICY, example = "plan-gate")),
    responses((status = 200, body = PolicyOut, description = "The policy.")))]
async fn get_policy(
    State(gw): St,
    _auth: Authorized<Platform<GatewayRead>>,
    Path(name): Path<String>,
) -> Result<Json<PolicyOut>, ApiError> {
    Ok(Json(catalog::get::<catalog::Policies>(gw.store(), &name).await?.into()))
}

/// Replace a gateway policy
///
/// Compiles and tests the new source, then writes it as a new version; every route naming
/// the policy uses it from then on.
#[utoipa::path(put, path = "/v1/gateway/policies/{name}", tag = "gateway", params(("name" = String, Path, description = POLICY, example = "plan-gate")), request_body = PolicyDocument,
    responses((status = 200, body = PolicyOut, description = "The policy as changed."),
        (status = 422, body = Problem, description = "`validation_failed`: the source does not compile or its tests fail.")))]
async fn replace_policy(
    State(gw): St,
    auth: Authorized<Platform<GatewayWrite>>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<PolicyDocument>,
) -> Result<Json<PolicyOut>, ApiError> {
    Ok(Json(gw.change_policy(&auth.audit, &name, Edit::Replace(b)).await?.into()))
}

/// Delete a gateway policy
///
/// Refused (409) while a route names it.
#[utoipa::path(delete, path = "/v1/gateway/policies/{name}", tag = "gateway", params(("name" = String, Path, description = POLICY, example = "plan-gate")),
    responses((status = 204, description = "Deleted."),
        (status = 409, body = Problem, description = "`conflict`: routes name the policy (`detail` lists them).")))]
async fn delete_policy(
    State(gw): St,
    auth: Authorized<Platform<GatewayWrite>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    gw.change_policy(&auth.audit, &name, Edit::Delete).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List a gateway policy's versions
#[utoipa::path(get, path = "/v1/gateway/policies/{name}/versions", tag = "gateway", params(("name" = String, Path, description = POLICY, example = "plan-gate")),
    responses((status = 200, body = PolicyVersionList, description = "The policy's history, newest first.")))]
async fn policy_versions(
    State(gw): St,
    _auth: Authorized<Platform<GatewayRead>>,
    Path(name): Path<String>,
) -> Result<Json<PolicyVersionList>, ApiError> {
    let data = catalog::history::<catalog::Policies>(gw.store(), &name)
        .await?
        .into_iter()
        .map(|v| PolicyVersionOut { change: v.meta(), policy: v.doc })
        .collect();
    Ok(Json(PolicyVersionList { data }))
}

/// Roll a gateway policy back
///
/// Restores an earlier version's source as a new version (compiled and tested again).
#[utoipa::path(post, path = "/v1/gateway/policies/{name}/rollback", tag = "gateway", params(("name" = String, Path, description = POLICY, example = "plan-gate")), request_body = Rollback,
    responses((status = 200, body = PolicyOut, description = "The policy as restored.")))]
async fn rollback_policy(
    State(gw): St,
    auth: Authorized<Platform<GatewayWrite>>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<Rollback>,
) -> Result<Json<PolicyOut>, ApiError> {
    Ok(Json(gw.change_policy(&auth.audit, &name, Edit::Rollback(b.version)).await?.into()))
}

/// List OpenAPI documents
///
/// The OpenAPI documents kept through the API, which routes name in `openapi` to have their
/// requests validated.
#[utoipa::path(get, path = "/v1/gateway/openapi", tag = "gateway",
    responses((status = 200, body = OpenApiList, description = "Every document.")))]
async fn list_openapi(State(gw): St, _auth: Authorized<Platform<GatewayRead>>) -> Result<Json<OpenApiList>, ApiError> {
    let data =
        catalog::list::<catalog::OpenApiDocuments>(gw.store()).await?.into_iter().map(OpenApiOut::from).collect();
    Ok(Json(OpenApiList { data }))
}

/// Create an OpenAPI document
///
/// Compiles the document (OpenAPI 3.0 or 3.1, JSON) as the validator will use it and stores
/// it as version 1, audited on the platform chain.
#[utoipa::path(post, path = "/v1/gateway/openapi", tag = "gateway", request_body = OpenApiDocument,
    responses((status = 201, body = OpenApiOut, description = "The new document."),
        (status = 409, body = Problem, description = "`conflict`: a document of this name exists."),
        (status = 422, body = Problem, description = "`validation_failed`: the document cannot be used (`detail` says why).")))]
async fn create_openapi(
    State(gw): St,
    auth: Authorized<Platform<GatewayWrite>>,
    ApiJson(b): ApiJson<OpenApiDocument>,
) -> Result<(StatusCode, Json<OpenApiOut>), ApiError> {
    let name = b.name.clone();
    Ok((StatusCode::CREATED, Json(gw.change_openapi(&auth.audit, &name, Edit::Create(b)).await?.into())))
}

/// Get an OpenAPI document
#[utoipa::path(get, path = "/v1/gateway/openapi/{name}", tag = "gateway", params(("name" = String, Path, description = DOCUMENT, example = "orders-v1")),
    responses((status = 200, body = OpenApiOut, description = "The document.")))]
async fn get_openapi(
    State(gw): St,
    _auth: Authorized<Platform<GatewayRead>>,
    Path(name): Path<String>,
) -> Result<Json<OpenApiOut>, ApiError> {
    Ok(Json(catalog::get::<catalog::OpenApiDocuments>(gw.store(), &name).await?.into()))
}

/// Replace an OpenAPI document
///
/// Writes the whole document as a new version; routes naming it validate against it from then on.
#[utoipa::path(put, path = "/v1/gateway/openapi/{name}", tag = "gateway", params(("name" = String, Path, description = DOCUMENT, example = "orders-v1")), request_body = OpenApiDocument,
    responses((status = 200, body = OpenApiOut, description = "The document as changed."),
        (status = 422, body = Problem, description = "`validation_failed`: the document cannot be used.")))]
async fn replace_openapi(
    State(gw): St,
    auth: Authorized<Platform<GatewayWrite>>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<OpenApiDocument>,
) -> Result<Json<OpenApiOut>, ApiError> {
    Ok(Json(gw.change_openapi(&auth.audit, &name, Edit::Replace(b)).await?.into()))
}

/// Delete an OpenAPI document
///
/// Refused (409) while a route names it.
#[utoipa::path(delete, path = "/v1/gateway/openapi/{name}", tag = "gateway", params(("name" = String, Path, description = DOCUMENT, example = "orders-v1")),
    responses((status = 204, description = "Deleted."),
        (status = 409, body = Problem, description = "`conflict`: routes name the document (`detail` lists them).")))]
async fn delete_openapi(
    State(gw): St,
    auth: Authorized<Platform<GatewayWrite>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    gw.change_openapi(&auth.audit, &name, Edit::Delete).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List an OpenAPI document's versions
#[utoipa::path(get, path = "/v1/gateway/openapi/{name}/versions", tag = "gateway", params(("name" = String, Path, description = DOCUMENT, example = "orders-v1")),
    responses((status = 200, body = OpenApiVersionList, description = "The document's history, newest first.")))]
async fn openapi_versions(
    State(gw): St,
    _auth: Authorized<Platform<GatewayRead>>,
    Path(name): Path<String>,
) -> Result<Json<OpenApiVersionList>, ApiError> {
    let data = catalog::history::<catalog::OpenApiDocuments>(gw.store(), &name)
        .await?
        .into_iter()
        .map(|v| OpenApiVersionOut { change: v.meta(), openapi: v.doc })
        .collect();
    Ok(Json(OpenApiVersionList { data }))
}

/// Roll an OpenAPI document back
///
/// Restores an earlier version as a new version.
#[utoipa::path(post, path = "/v1/gateway/openapi/{name}/rollback", tag = "gateway", params(("name" = String, Path, description = DOCUMENT, example = "orders-v1")), request_body = Rollback,
    responses((status = 200, body = OpenApiOut, description = "The document as restored.")))]
async fn rollback_openapi(
    State(gw): St,
    auth: Authorized<Platform<GatewayWrite>>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<Rollback>,
) -> Result<Json<OpenApiOut>, ApiError> {
    Ok(Json(gw.change_openapi(&auth.audit, &name, Edit::Rollback(b.version)).await?.into()))
}

/// Which SLI records, over what range, in what steps.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SliQuery {
    /// Only this route.
    #[param(example = "orders")]
    pub route: Option<String>,
    /// Only this tenant (its id; `-` for anonymous requests, `other` for tenants folded
    /// together when a replica saw too many in one flush).
    pub tenant: Option<String>,
    /// Start (RFC 3339, inclusive; rounded down to the minute). Default: an hour before `to`.
    pub from: Option<String>,
    /// End (RFC 3339, exclusive). Default: now.
    pub to: Option<String>,
    /// Seconds per point: a multiple of 60 (default 60); at most 1,440 points.
    pub step: Option<i64>,
}

/// Requests by status class.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusCounts {
    /// Informational answers.
    #[serde(rename = "1xx")]
    pub informational: u64,
    /// Successful answers.
    #[serde(rename = "2xx")]
    pub success: u64,
    /// Redirections.
    #[serde(rename = "3xx")]
    pub redirection: u64,
    /// The client's errors: not failures of the service.
    #[serde(rename = "4xx")]
    pub client_error: u64,
    /// The service's failures, the gateway's own 502/503/504 included.
    #[serde(rename = "5xx")]
    pub server_error: u64,
    /// Of the 4xx, the 429s (limits and bulkheads, the gateway's or the service's).
    pub throttled: u64,
    /// All requests.
    pub total: u64,
}

/// Latencies of one point: counts per bucket (upper bounds in `latency_buckets_ms`, then
/// one above the last), and quantiles estimated from them.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LatencyOut {
    /// Requests per bucket, in `latency_buckets_ms` order, then those above the last bound.
    pub counts: Vec<u64>,
    /// The median in ms, estimated by interpolation inside a bucket.
    pub p50_ms: Option<f64>,
    /// The 90th percentile in ms (estimated likewise).
    pub p90_ms: Option<f64>,
    /// The 99th percentile in ms (estimated likewise).
    pub p99_ms: Option<f64>,
}

/// One point of the series.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SliPoint {
    /// The step's start (RFC 3339).
    pub start: String,
    /// Requests by status class.
    pub requests: StatusCounts,
    /// Answers that were not 5xx, as a share of all (absent without requests).
    pub availability: Option<f64>,
    /// How long the answers took to start (to the response head).
    pub latency: LatencyOut,
    /// Request body bytes received.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
}

/// SLI records summed per step; steps without requests are left out.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SliSeries {
    /// The start of the range (RFC 3339).
    pub from: String,
    /// The end of the range (RFC 3339, exclusive).
    pub to: String,
    /// Seconds per point.
    pub step: i64,
    /// Upper bounds (inclusive, ms) of the latency buckets; one more bucket counts the rest.
    pub latency_buckets_ms: Vec<u32>,
    /// The points, oldest first.
    pub data: Vec<SliPoint>,
}

/// Read the gateway's SLI records
///
/// Per step: requests by status class, availability, a latency histogram with estimated
/// quantiles, and bytes, summed over the matching routes and tenants and over every replica.
/// Each replica writes its records every `gateway.sli_flush_ms`.
#[utoipa::path(get, path = "/v1/gateway/sli", tag = "gateway", params(SliQuery),
    responses((status = 200, body = SliSeries, description = "The series.")))]
async fn read_sli(
    State(gw): St,
    _auth: Authorized<Platform<GatewayRead>>,
    ApiQuery(q): ApiQuery<SliQuery>,
) -> Result<Json<SliSeries>, ApiError> {
    let secs = |name: &str, v: &Option<String>| -> Result<Option<i64>, ApiError> {
        Ok(runway_core::json::query_time(v.as_deref(), name)?.map(|us| us.div_euclid(1_000_000)))
    };
    let to = secs("to", &q.to)?.unwrap_or_else(|| gw.clock().now_micros().div_euclid(1_000_000) + 1);
    let from = secs("from", &q.from)?.unwrap_or(to - 3600).div_euclid(60) * 60;
    if from >= to {
        return Err(ApiError::query("from", "must be before `to`"));
    }
    let step = q.step.unwrap_or(60);
    if step < 60 || step % 60 != 0 || step > 86_400 * 31 {
        return Err(ApiError::query("step", "a multiple of 60 seconds, at most 31 days"));
    }
    if (to - from) / step > 1440 {
        return Err(ApiError::query("step", "more than 1440 points; widen the step or narrow the range"));
    }
    let minutes = crate::records::read(gw.store(), q.route.as_deref(), q.tenant.as_deref(), from, to).await?;
    let keyed = minutes
        .into_iter()
        .map(|(minute, r)| (crate::sli::SliKey { route: String::new(), tenant: String::new(), minute }, r));
    let data = crate::sli::rollup(keyed, step)
        .into_iter()
        .map(|(start, r)| SliPoint {
            start: runway_core::clock::rfc3339(start * 1_000_000),
            requests: StatusCounts {
                informational: r.requests[0],
                success: r.requests[1],
                redirection: r.requests[2],
                client_error: r.requests[3],
                server_error: r.requests[4],
                throttled: r.throttled,
                total: r.total(),
            },
            availability: crate::sli::availability(&r),
            latency: LatencyOut {
                counts: r.latency.counts().to_vec(),
                p50_ms: r.latency.quantile(0.5),
                p90_ms: r.latency.quantile(0.9),
                p99_ms: r.latency.quantile(0.99),
            },
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
        })
        .collect();
    Ok(Json(SliSeries {
        from: runway_core::clock::rfc3339(from * 1_000_000),
        to: runway_core::clock::rfc3339(to * 1_000_000),
        step,
        latency_buckets_ms: crate::sli::bounds_ms().to_vec(),
        data,
    }))
}

/// A tenant's month-to-date requests through the gateway against its plan's monthly quota.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuotaOut {
    /// The tenant's id.
    pub tenant: String,
    /// The tenant's plan.
    pub plan: String,
    /// The start of the calendar month counted (UTC, RFC 3339).
    pub period_start: String,
    /// Requests proxied for the tenant this month, from the SLI records (every replica's,
    /// up to their last flush).
    pub used: u64,
    /// The plan's `monthly_quotas.api_requests`, if it sets one.
    pub quota: Option<u64>,
    /// What is left of it (0 once over).
    pub remaining: Option<u64>,
    /// Always false for now: quotas are reported, not enforced, until the metering capability
    /// owns usage.
    pub enforced: bool,
}

/// Read a tenant's monthly gateway quota
///
/// Month-to-date proxied requests of the tenant beside its plan's `monthly_quotas.api_requests`.
/// Reported, not enforced.
#[utoipa::path(get, path = "/v1/gateway/quotas/{tenant}", tag = "gateway",
    params(("tenant" = String, Path, description = "The tenant's id or slug.", example = "acme")),
    responses((status = 200, body = QuotaOut, description = "The month so far.")))]
async fn read_quota(
    State(gw): St,
    _auth: Authorized<Platform<GatewayRead>>,
    Path(tenant): Path<String>,
) -> Result<Json<QuotaOut>, ApiError> {
    Ok(Json(gw.quota(&tenant).await?))
}
