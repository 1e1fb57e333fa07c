//! `Idempotency-Key` on every POST of the API, through `runway-idempotency`: the first
//! request's response is stored per credential and replayed for a retry with the same body; a
//! different body is 422; a retry while the first is still running is 409.

use crate::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use runway_core::{ApiError, ErrorCode};
use runway_idempotency::Begin;
use runway_identity::Principal;
use runway_store::StoreError;
use std::sync::Arc;

/// Response headers worth replaying.
const KEPT_HEADERS: [HeaderName; 2] = [header::CONTENT_TYPE, header::LOCATION];

/// Runs after authentication, so records are scoped to the calling credential.
pub async fn idempotency(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    match handle(state, req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(state: AppState, req: Request, next: Next) -> Result<Response, ApiError> {
    let Some(key) = runway_idempotency::key_from(req.headers())? else {
        return Ok(next.run(req).await);
    };
    let credential = req
        .extensions()
        .get::<Arc<Principal>>()
        .map(|p| match &p.kind {
            // A local operator is named by the OS user, which could be `admin`: keep their
            // records apart from the admin token's.
            runway_identity::PrincipalKind::Cli { .. } => format!("cli:{}", p.credential_id()),
            _ => p.credential_id().to_owned(),
        })
        .ok_or_else(|| ApiError::unauthenticated("authentication is required"))?;
    let (parts, body) = req.into_parts();
    let limit = state.config.server.body_limit_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::new(ErrorCode::PayloadTooLarge, "the request body exceeds the configured limit"))?;
    let hash = runway_idempotency::request_hash(parts.method.as_str(), parts.uri.path(), parts.uri.query(), &bytes);
    let req = Request::from_parts(parts, Body::from(bytes));
    let now = state.clock.now_micros();
    let ttl = state.config.auth.idempotency_ttl_secs as i64 * 1_000_000;
    let store = &state.store;
    if let Begin::Replay(res) = runway_idempotency::begin(store, now, ttl, &credential, &key, &hash).await? {
        return Ok(res);
    }

    let res = next.run(req).await;
    let (parts, body) = res.into_parts();
    let body = match axum::body::to_bytes(body, 16 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => {
            runway_idempotency::forget(store, &credential, &key).await;
            return Err(ApiError::internal(format!("could not buffer response for idempotency: {e}")));
        }
    };
    if parts.status.is_server_error() {
        // Our failure, not the client's: let the same key try again.
        runway_idempotency::forget(store, &credential, &key).await;
    } else {
        runway_idempotency::complete(store, &credential, &key, parts.status, &parts.headers, &KEPT_HEADERS, &body)
            .await;
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

/// Deletes records past their retention; run periodically.
pub async fn purge_expired(state: &AppState) -> Result<u64, StoreError> {
    runway_idempotency::purge_expired(&state.store, state.clock.now_micros()).await
}
