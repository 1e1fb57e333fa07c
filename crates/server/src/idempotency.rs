//! `Idempotency-Key` on every POST: the first request's response is stored per credential and
//! replayed for a retry with the same body; a different body is 422; a retry while the first is
//! still running is 409.

use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use runway_core::{ApiError, ErrorCode};
use runway_identity::Principal;
use runway_store::{DbScope, StoreError, on_conn};
use sha2::{Digest, Sha256};
use std::sync::Arc;

const HEADER: &str = "idempotency-key";
/// A record still `in_flight` after this long belongs to a request that died; it may be retried.
const IN_FLIGHT_LEASE_MICROS: i64 = 60 * 1_000_000;
/// Response headers worth replaying.
const KEPT_HEADERS: &[&str] = &["content-type", "location"];

#[derive(sqlx::FromRow)]
struct Record {
    request_hash: String,
    state: String,
    status_code: Option<i64>,
    response_headers: Option<String>,
    response_body: Option<Vec<u8>>,
    created_at: i64,
    expires_at: i64,
}

fn request_hash(req: &Request, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(req.method().as_str().as_bytes());
    h.update(b"\n");
    h.update(req.uri().path().as_bytes());
    h.update(b"?");
    h.update(req.uri().query().unwrap_or("").as_bytes());
    h.update(b"\n");
    h.update(body);
    hex::encode(h.finalize())
}

fn validate_key(v: &HeaderValue) -> Result<String, ApiError> {
    let s = v.to_str().unwrap_or("");
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::header("Idempotency-Key", "Idempotency-Key must be 1 to 255 visible ASCII characters"));
    }
    Ok(s.to_owned())
}

/// Runs after authentication, so records are scoped to the calling credential.
pub async fn idempotency(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let mut keys = req.headers().get_all(HEADER).iter();
    let Some(raw) = keys.next() else {
        return next.run(req).await;
    };
    if keys.next().is_some() {
        return ApiError::header("Idempotency-Key", "send one Idempotency-Key header, not several").into_response();
    }
    match handle(state, raw.clone(), req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(state: AppState, raw: HeaderValue, req: Request, next: Next) -> Result<Response, ApiError> {
    let key = validate_key(&raw)?;
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
    let req = Request::from_parts(parts, Body::from(bytes.clone()));
    let hash = request_hash(&req, &bytes);
    let now = state.clock.now_micros();
    let ttl = state.config.auth.idempotency_ttl_secs as i64 * 1_000_000;

    let mut tx = state.store.write(DbScope::Platform).await?;
    let inserted = on_conn!(&mut tx, c => sqlx::query(
        "INSERT INTO idempotency_records (credential_id, idem_key, request_hash, state, created_at, expires_at)
         VALUES ($1, $2, $3, 'in_flight', $4, $5) ON CONFLICT (credential_id, idem_key) DO NOTHING")
        .bind(&credential).bind(&key).bind(&hash).bind(now).bind(now + ttl)
        .execute(&mut *c).await.map(|r| r.rows_affected()))
    .map_err(StoreError::from)?;
    if inserted == 0 {
        let rec: Record = on_conn!(&mut tx, c => sqlx::query_as(
            "SELECT request_hash, state, status_code, response_headers, response_body, created_at, expires_at
             FROM idempotency_records WHERE credential_id = $1 AND idem_key = $2")
            .bind(&credential).bind(&key).fetch_one(&mut *c).await)
        .map_err(StoreError::from)?;
        let stale =
            rec.expires_at <= now || (rec.state == "in_flight" && rec.created_at + IN_FLIGHT_LEASE_MICROS <= now);
        if stale {
            on_conn!(&mut tx, c => sqlx::query(
                "UPDATE idempotency_records SET request_hash = $1, state = 'in_flight', status_code = NULL, response_headers = NULL,
                 response_body = NULL, created_at = $2, expires_at = $3 WHERE credential_id = $4 AND idem_key = $5")
                .bind(&hash).bind(now).bind(now + ttl).bind(&credential).bind(&key)
                .execute(&mut *c).await.map(|_| ()))
            .map_err(StoreError::from)?;
        } else if rec.state == "in_flight" {
            return Err(ApiError::new(
                ErrorCode::IdempotencyKeyInUse,
                "a request with this Idempotency-Key is still being processed",
            )
            .with_retry_after(1));
        } else if rec.request_hash != hash {
            return Err(ApiError::new(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used with a different request; use a new key",
            ));
        } else {
            return replay(rec);
        }
    }
    tx.commit().await?;

    let res = next.run(req).await;
    let (parts, body) = res.into_parts();
    let body = match axum::body::to_bytes(body, 16 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => {
            forget(&state, &credential, &key).await;
            return Err(ApiError::internal(format!("could not buffer response for idempotency: {e}")));
        }
    };
    if parts.status.is_server_error() {
        // Our failure, not the client's: let the same key try again.
        forget(&state, &credential, &key).await;
    } else {
        store_response(&state, &credential, &key, parts.status, &parts.headers, &body).await;
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

fn replay(rec: Record) -> Result<Response, ApiError> {
    let status =
        rec.status_code.and_then(|s| u16::try_from(s).ok()).and_then(|s| StatusCode::from_u16(s).ok()).ok_or_else(
            || StoreError::Corrupt { what: "idempotency status", reason: format!("{:?}", rec.status_code) },
        )?;
    let mut res = (status, Bytes::from(rec.response_body.unwrap_or_default())).into_response();
    let headers: Vec<(String, String)> = match rec.response_headers.as_deref() {
        Some(h) => runway_store::stored_json("idempotency response headers", h)?,
        None => Vec::new(),
    };
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
            res.headers_mut().insert(k, v);
        }
    }
    res.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(res)
}

async fn store_response(
    state: &AppState,
    credential: &str,
    key: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) {
    let kept: Vec<(String, String)> = KEPT_HEADERS
        .iter()
        .filter_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()).map(|v| ((*h).to_owned(), v.to_owned())))
        .collect();
    let kept = serde_json::to_string(&kept).unwrap_or_else(|_| "[]".into());
    let result = async {
        let mut tx = state.store.write(DbScope::Platform).await?;
        on_conn!(&mut tx, c => sqlx::query(
            "UPDATE idempotency_records SET state = 'done', status_code = $1, response_headers = $2, response_body = $3
             WHERE credential_id = $4 AND idem_key = $5")
            .bind(i64::from(status.as_u16())).bind(&kept).bind(body).bind(credential).bind(key)
            .execute(&mut *c).await.map(|_| ()))?;
        tx.commit().await
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "could not store the idempotent response; a retry will run again");
        forget(state, credential, key).await;
    }
}

async fn forget(state: &AppState, credential: &str, key: &str) {
    let result = async {
        let mut tx = state.store.write(DbScope::Platform).await?;
        on_conn!(&mut tx, c => sqlx::query("DELETE FROM idempotency_records WHERE credential_id = $1 AND idem_key = $2")
            .bind(credential).bind(key).execute(&mut *c).await.map(|_| ()))?;
        tx.commit().await
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "could not release an idempotency key");
    }
}

/// Deletes records past their retention; run periodically.
pub async fn purge_expired(state: &AppState) -> Result<u64, StoreError> {
    let now = state.clock.now_micros();
    let mut tx = state.store.write(DbScope::Platform).await?;
    let n = on_conn!(&mut tx, c => sqlx::query("DELETE FROM idempotency_records WHERE expires_at <= $1")
        .bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    tx.commit().await?;
    Ok(n)
}
