//! The HTTP application: public operational routes, the authenticated `/v1` API, the
//! middleware around them, and the generated OpenAPI document.

use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::{Json, Router, middleware};
use runway_core::{ApiError, ErrorCode};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi as _};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Runway API", description = "Tenants, credentials, audit and the rest of a SaaS backbone.", license(name = "Apache-2.0")),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(runway_core::error::Problem)),
    tags((name = "tenants"), (name = "keys"), (name = "audit"), (name = "events"), (name = "webhooks"), (name = "flags"), (name = "gateway"), (name = "operations"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

fn ops_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz))
}

/// The OpenAPI document, generated from the route annotations; needs no running server.
pub fn openapi() -> OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    for (_, part) in capability_docs() {
        doc.merge(part);
    }
    // After the merge, so every capability's operations get the common error responses.
    crate::contract::CommonResponses.modify(&mut doc);
    doc
}

/// Each router's own document, in merge order. Merging keeps the first schema of a name, so two
/// capabilities naming different types alike would silently document one with the other's
/// shape; `component_names_do_not_collide` below refuses that.
fn capability_docs() -> Vec<(&'static str, OpenApi)> {
    vec![
        ("operations", ops_routes().split_for_parts().1),
        ("identity", runway_identity::routes::router().split_for_parts().1),
        ("events", runway_events::routes::router().split_for_parts().1),
        ("flags", runway_flags::routes::router().split_for_parts().1),
        ("ofrep", runway_flags::ofrep::router().split_for_parts().1),
        ("unleash client API", runway_flags::client_api::router().split_for_parts().1),
        ("gateway", runway_gateway::api::router().split_for_parts().1),
        ("slos", runway_slo::routes::router().split_for_parts().1),
    ]
}

/// Builds the whole router around `state`.
pub fn router(state: AppState) -> Router {
    let (v1, _) = runway_identity::routes::router().split_for_parts();
    let (events, _) = runway_events::routes::router().split_for_parts();
    let events_state =
        runway_events::routes::EventsState { events: state.events.clone(), identity: state.identity.clone() };
    let flags = runway_flags::routes::router()
        .merge(runway_flags::ofrep::router())
        .merge(runway_flags::client_api::router())
        .split_for_parts()
        .0
        .with_state(state.flags.clone());
    let v1 = v1
        .with_state(state.identity.clone())
        .merge(events.with_state(events_state))
        .merge(flags)
        .merge(runway_gateway::api::router().split_for_parts().0.with_state(state.gateway.clone()))
        .merge(runway_slo::routes::router().split_for_parts().0.with_state(state.slos.clone()))
        // Layers run bottom-up: authentication, then idempotency, then the handler.
        .layer(middleware::from_fn_with_state(state.clone(), crate::idempotency::idempotency))
        .layer(middleware::from_fn_with_state(state.identity.clone(), runway_identity::authenticate));
    let (ops, _) = ops_routes().split_for_parts();
    let spec = serde_json::to_string_pretty(&openapi()).unwrap_or_default();
    Router::new()
        .merge(ops.with_state(state.clone()))
        .route("/metrics", axum::routing::get(metrics_with_token).with_state(state.clone()))
        .route(
            "/openapi.json",
            axum::routing::get(move || async move { ([(header::CONTENT_TYPE, "application/json")], spec.clone()) }),
        )
        .route("/docs", axum::routing::get(|| async { Html(include_str!("docs.html")) }))
        .route("/docs/{*file}", axum::routing::get(docs_asset))
        .route("/", axum::routing::get(|| async { axum::response::Redirect::temporary("/docs") }))
        .merge(v1)
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(ErrorCode::MethodNotAllowed, "this route does not accept that method")
        })
        .layer(axum::extract::DefaultBodyLimit::max(state.config.server.body_limit_bytes))
        .layer(middleware::from_fn(crate::hygiene::hygiene))
        .layer(middleware::from_fn(crate::observe::observe))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::internal("handler panicked").into_response()
        }))
}

/// Liveness: the process is serving.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()), responses((status = 200, description = "alive")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the store answers and its migrations are current; 503 while draining.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, description = "ready"), (status = 503, body = runway_core::error::Problem)))]
async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        return ApiError::new(ErrorCode::Unavailable, "shutting down").into_response();
    }
    if let Err(e) = state.store.ping().await {
        return ApiError::new(ErrorCode::Unavailable, format!("store unreachable: {e}")).into_response();
    }
    match state.store.pending_migrations().await {
        Ok(0) => (
            StatusCode::OK,
            Json(
                serde_json::json!({"status": "ready", "engine": format!("{:?}", state.store.engine()).to_lowercase()}),
            ),
        )
            .into_response(),
        Ok(n) => ApiError::new(ErrorCode::Unavailable, format!("{n} migration(s) pending; run `runway migrate`"))
            .into_response(),
        Err(e) => ApiError::new(ErrorCode::Unavailable, format!("cannot read migrations: {e}")).into_response(),
    }
}

/// The API listener of a `gateway`-role process: health and readiness only.
pub fn ops_router(state: AppState) -> Router {
    let (ops, _) = ops_routes().split_for_parts();
    Router::new()
        .merge(ops.with_state(state))
        .fallback(|| async { ApiError::not_found("this process serves the gateway only (server.role = \"gateway\")") })
        .layer(middleware::from_fn(crate::observe::observe))
}

/// The metrics listener's router: `/metrics` only, no credential (it listens on loopback unless
/// the operator chose otherwise).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(metrics).with_state(state))
        .fallback(|| async { ApiError::not_found("this listener serves /metrics only") })
}

/// `/metrics` on the API listener: there only with `server.metrics_token`, and only for a request
/// that presents it; otherwise it does not exist, so tenant and endpoint counts stay private.
async fn metrics_with_token(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let Some(token) = &state.config.server.metrics_token else {
        return ApiError::not_found("metrics are served on their own listener (server.metrics_listen)").into_response();
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .unwrap_or("");
    // Digests of equal length, so the comparison says nothing about the token's length either.
    let digest = |b: &[u8]| <sha2::Sha256 as sha2::Digest>::digest(b);
    let ok: bool = subtle::ConstantTimeEq::ct_eq(
        digest(presented.as_bytes()).as_slice(),
        digest(token.expose().as_bytes()).as_slice(),
    )
    .into();
    if !ok {
        return ApiError::unauthenticated("`/metrics` here needs `Authorization: Bearer <server.metrics_token>`")
            .into_response();
    }
    metrics(State(state)).await
}

/// The Swagger UI configuration behind `/docs`: the served contract, "try it out" on, and no
/// call to the public validator (the page loads nothing from outside the server).
static DOCS_CONFIG: LazyLock<Arc<utoipa_swagger_ui::Config<'static>>> = LazyLock::new(|| {
    Arc::new(
        utoipa_swagger_ui::Config::from("/openapi.json")
            .try_it_out_enabled(true)
            .display_request_duration(true)
            .filter(true)
            .deep_linking(true)
            .validator_url("none"),
    )
});

/// A file of the interactive reference (Swagger UI), built into the binary.
async fn docs_asset(Path(file): Path<String>) -> Response {
    match utoipa_swagger_ui::serve(&file, DOCS_CONFIG.clone()) {
        Ok(Some(f)) if file != "index.html" => {
            let mut res = ([(header::CONTENT_TYPE, f.content_type)], f.bytes.into_owned()).into_response();
            res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
            if f.gzpipped {
                res.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            res
        }
        Ok(_) => ApiError::not_found("no such file in the API reference").into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    crate::observe::record_pool_gauges(&state.store);
    if let Err(e) = state.events.record_gauges().await {
        tracing::warn!(error = %e, "could not read webhook queue gauges");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::observe::prometheus().render()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_names_do_not_collide() {
        let mut seen: std::collections::BTreeMap<String, (&str, serde_json::Value)> = Default::default();
        let mut clashes = Vec::new();
        for (owner, doc) in capability_docs() {
            for (name, schema) in doc.components.map(|c| c.schemas).unwrap_or_default() {
                let schema = serde_json::to_value(&schema).unwrap_or_default();
                match seen.get(&name) {
                    Some((first, earlier)) if *earlier != schema => {
                        clashes.push(format!("`{name}` means one thing in {first} and another in {owner}"))
                    }
                    _ => {
                        seen.insert(name, (owner, schema));
                    }
                }
            }
        }
        assert!(clashes.is_empty(), "schema names clash across capabilities:\n{}", clashes.join("\n"));
    }
}
