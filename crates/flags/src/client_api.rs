//! The Unleash client API, so Unleash server-side SDKs can point at Runway unchanged:
//! `GET /api/client/features` (ETag, 304), `POST /api/client/register`, `POST /api/client/metrics`.
//! SDKs send the key bare in `Authorization`; it must carry `flags:evaluate` and is normally
//! bound to an environment.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use runway_core::error::Problem;
use runway_core::{ApiError, ApiJson};
use runway_identity::scope::FlagsEvaluate;
use runway_identity::{Authorized, Platform};
use serde::Deserialize;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Flags;

pub fn router() -> OpenApiRouter<Arc<Flags>> {
    OpenApiRouter::new().routes(routes!(features)).routes(routes!(register)).routes(routes!(client_metrics))
}

/// Local evaluation hands the SDK every flag's rules, and the tenant fields of a tenant key
/// could not be enforced there: the Unleash client API takes `Platform<FlagsEvaluate>`, so tenant
/// keys are refused before a handler runs and evaluate through OFREP instead.
type ClientKey = Authorized<Platform<FlagsEvaluate>>;

/// Query of the features document.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeaturesQuery {
    /// For keys not bound to an environment; a bound key may only name its own.
    #[param(example = "production")]
    pub environment: Option<String>,
    /// Accepted for SDK compatibility; Runway has one project.
    pub project: Option<String>,
}

/// Unleash SDKs: fetch flags
///
/// Every flag of the key's environment in Unleash's client format, for server-side SDKs that
/// evaluate locally. Answers with an `ETag`; `If-None-Match` with it gets `304` while nothing
/// changed. Not for tenant keys.
#[utoipa::path(get, path = "/api/client/features", tag = "flags",
    params(FeaturesQuery, ("If-None-Match" = Option<String>, Header, description = "The `ETag` of a previous answer; unchanged flags answer 304.")),
    responses((status = 200, body = Object, description = "Unleash client features document `{version, features, segments}`, with an `ETag`."),
        (status = 304, description = "Nothing changed since the `ETag` in `If-None-Match`."),
        (status = 404, body = Problem, description = "`not_found`: no such environment.")))]
async fn features(
    State(flags): State<Arc<Flags>>,
    auth: ClientKey,
    Query(q): Query<FeaturesQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let _ = q.project;
    let env = flags.environment_for(auth.principal.environment.as_deref(), q.environment.as_deref())?;
    let state = flags.env_state(&env)?;
    if crate::ofrep::if_none_match(&headers, &state.etag) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, state.etag.clone())]).into_response());
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json".to_owned()), (header::ETAG, state.etag.clone())],
        state.client_features.clone(),
    )
        .into_response())
}

/// An SDK announcing itself.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    /// The application using the SDK (1 to 200 characters).
    #[schema(example = "billing")]
    pub app_name: String,
    /// This process of the application; `default` when absent.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// The SDK and its version, such as `unleash-client-python:6.9.1`.
    #[serde(default)]
    pub sdk_version: Option<String>,
    /// Strategy names the SDK knows.
    #[serde(default)]
    #[schema(max_items = 100)]
    pub strategies: Vec<String>,
    /// When the SDK started (RFC 3339).
    #[serde(default)]
    pub started: Option<String>,
    /// How often the SDK polls, in milliseconds.
    #[serde(default)]
    pub interval: Option<i64>,
}

/// Strategy names one SDK registration may list.
const MAX_STRATEGIES: usize = 100;

/// Unleash SDKs: register
///
/// Records an SDK instance (app, instance, SDK version, strategies it knows).
#[utoipa::path(post, path = "/api/client/register", tag = "flags", request_body = Registration,
    responses((status = 202, description = "Recorded.")))]
async fn register(
    State(flags): State<Arc<Flags>>,
    auth: ClientKey,
    ApiJson(r): ApiJson<Registration>,
) -> Result<StatusCode, ApiError> {
    runway_core::bounds::items("/strategies", r.strategies.len(), MAX_STRATEGIES)?;
    if r.app_name.trim().is_empty() || r.app_name.len() > 200 {
        return Err(ApiError::validation("appName", "must be 1 to 200 characters"));
    }
    let env = flags.environment_for(auth.principal.environment.as_deref(), None)?;
    let strategies = serde_json::to_string(&r.strategies).unwrap_or_else(|_| "[]".into());
    flags
        .register_client(
            &r.app_name,
            r.instance_id.as_deref().unwrap_or("default"),
            &env,
            r.sdk_version.as_deref().unwrap_or("unknown"),
            &strategies,
            &r.started,
            r.interval,
        )
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// The largest count one SDK metrics bucket may carry for one flag (a bucket covers a minute or so).
const MAX_BUCKET_COUNT: u64 = 1_000_000_000;

/// Evaluation counts an SDK gathered locally.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientMetrics {
    /// The application using the SDK.
    #[schema(example = "billing")]
    pub app_name: String,
    /// This process of the application.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// The counts: `{start, stop, toggles: {<flag>: {yes, no, variants: {<name>: n}}}}`, at most
    /// 10,000 flags and 100 variants per flag.
    #[schema(value_type = Object, example = json!({"start": "2026-11-29T10:00:00Z", "stop": "2026-11-29T10:01:00Z", "toggles": {"new-checkout": {"yes": 40, "no": 2, "variants": {}}}}))]
    pub bucket: Bucket,
}

/// Flags one SDK metrics bucket may count, and variants per flag.
const MAX_TOGGLES: usize = 10_000;
const MAX_TOGGLE_VARIANTS: usize = 100;

#[derive(Debug, Deserialize)]
pub struct Bucket {
    #[serde(default)]
    pub toggles: HashMap<String, ToggleCount>,
    #[serde(default)]
    pub start: Option<Value>,
    #[serde(default)]
    pub stop: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct ToggleCount {
    #[serde(default)]
    pub yes: u64,
    #[serde(default)]
    pub no: u64,
    #[serde(default)]
    pub variants: HashMap<String, u64>,
}

/// Unleash SDKs: report usage
///
/// Adds an SDK's evaluation counts to flag usage; counts for flags the environment does not
/// have are dropped.
#[utoipa::path(post, path = "/api/client/metrics", tag = "flags", request_body = ClientMetrics,
    responses((status = 202, description = "Counted.")))]
async fn client_metrics(
    State(flags): State<Arc<Flags>>,
    auth: ClientKey,
    ApiJson(m): ApiJson<ClientMetrics>,
) -> Result<StatusCode, ApiError> {
    let env = flags.environment_for(auth.principal.environment.as_deref(), None)?;
    let state = flags.env_state(&env)?;
    let now = flags.clock.now_micros();
    let _ = (&m.app_name, &m.instance_id, &m.bucket.start, &m.bucket.stop);
    runway_core::bounds::properties("/bucket/toggles", m.bucket.toggles.len(), MAX_TOGGLES)?;
    for (name, t) in &m.bucket.toggles {
        let at = runway_core::bounds::pointer("/bucket/toggles", name);
        runway_core::bounds::properties(&format!("{at}/variants"), t.variants.len(), MAX_TOGGLE_VARIANTS)?;
    }
    for (name, t) in &m.bucket.toggles {
        let too_many = |n: u64| n > MAX_BUCKET_COUNT;
        if too_many(t.yes) || too_many(t.no) || t.variants.values().any(|n| too_many(*n)) {
            return Err(ApiError::validation(
                runway_core::json::pointer(["bucket", "toggles", name.as_str()]),
                format!("counts above {MAX_BUCKET_COUNT} in one bucket are not believable"),
            ));
        }
        // Counts for flags this environment does not have are dropped: SDKs count every name
        // they were asked about, and unbounded names would grow the usage table and metrics.
        if !state.engine.contains(name) {
            continue;
        }
        // Variant counts are evaluations that were on, under that variant; "disabled" is the
        // answer when off (or on without variants), which the yes/no counts already cover.
        let mut named = 0u64;
        for (variant, n) in t.variants.iter().filter(|(v, _)| v.as_str() != "disabled") {
            flags.usage.record(&env, name, variant, *n, 0, now);
            named = named.saturating_add(*n);
        }
        let yes = t.yes.saturating_sub(named);
        if yes > 0 || t.no > 0 {
            flags.usage.record(&env, name, "disabled", yes, t.no, now);
        }
    }
    Ok(StatusCode::ACCEPTED)
}
