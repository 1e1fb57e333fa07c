//! `Idempotency-Key` records, the IETF draft's behaviour in one place for the API's POSTs and
//! the gateway's routes: the first request's response is stored per credential and replayed
//! for a retry with the same request; another request under the key is 422; a retry while the
//! first is still running is 409. Callers decide what to store (never a 5xx, so the client can
//! try again) and namespace their credentials.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use runway_core::{ApiError, ErrorCode};
use runway_store::{DbScope, Store, StoreError, on_conn};
use sha2::{Digest, Sha256};

/// The request header (lower case, as `HeaderMap` keys are).
pub const HEADER: &str = "idempotency-key";
/// The response header on a replayed answer.
pub const REPLAYED: &str = "idempotent-replayed";
/// A record still `in_flight` after this long belongs to a request that died; it may be retried.
pub const IN_FLIGHT_LEASE_MICROS: i64 = 60 * 1_000_000;

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

/// The request's key: `None` without the header; 400 for several headers or a key that is not
/// 1–255 visible ASCII characters.
pub fn key_from(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut keys = headers.get_all(HEADER).iter();
    let Some(raw) = keys.next() else { return Ok(None) };
    if keys.next().is_some() {
        return Err(ApiError::header("Idempotency-Key", "send one Idempotency-Key header, not several"));
    }
    let s = raw.to_str().unwrap_or("");
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::header("Idempotency-Key", "Idempotency-Key must be 1 to 255 visible ASCII characters"));
    }
    Ok(Some(s.to_owned()))
}

/// What identifies "the same request" under a key: method, path, query and body.
pub fn request_hash(method: &str, path: &str, query: Option<&str>, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update(b"\n");
    h.update(path.as_bytes());
    h.update(b"?");
    h.update(query.unwrap_or("").as_bytes());
    h.update(b"\n");
    h.update(body);
    hex::encode(h.finalize())
}

/// 409 `idempotency_key_in_use`: the first request under the key is still running.
pub fn in_use() -> ApiError {
    ApiError::new(ErrorCode::IdempotencyKeyInUse, "a request with this Idempotency-Key is still being processed")
        .with_retry_after(1)
}

/// 422 `idempotency_key_reused`: the key was used with another request.
pub fn reused() -> ApiError {
    ApiError::new(
        ErrorCode::IdempotencyKeyReused,
        "this Idempotency-Key was used with a different request; use a new key",
    )
}

/// What the caller does after [`begin`].
pub enum Begin {
    /// The key is now this request's: run it, then [`complete`] or [`forget`].
    Proceed,
    /// The stored answer of the first request, to send as is.
    Replay(Response),
}

/// Claims `key` for this request, or says why not: 409 `idempotency_key_in_use` while the first
/// request runs, 422 `idempotency_key_reused` for another request, the stored answer for the
/// same one. An expired record, or an in-flight one older than a minute, is taken over.
pub async fn begin(
    store: &Store,
    now: i64,
    ttl_micros: i64,
    credential: &str,
    key: &str,
    hash: &str,
) -> Result<Begin, ApiError> {
    let mut tx = store.write(DbScope::Platform).await?;
    let inserted = on_conn!(&mut tx, c => sqlx::query(
        "INSERT INTO idempotency_records (credential_id, idem_key, request_hash, state, created_at, expires_at)
         VALUES ($1, $2, $3, 'in_flight', $4, $5) ON CONFLICT (credential_id, idem_key) DO NOTHING")
        .bind(credential).bind(key).bind(hash).bind(now).bind(now + ttl_micros)
        .execute(&mut *c).await.map(|r| r.rows_affected()))
    .map_err(StoreError::from)?;
    if inserted == 0 {
        let rec: Record = on_conn!(&mut tx, c => sqlx::query_as(
            "SELECT request_hash, state, status_code, response_headers, response_body, created_at, expires_at
             FROM idempotency_records WHERE credential_id = $1 AND idem_key = $2")
            .bind(credential).bind(key).fetch_one(&mut *c).await)
        .map_err(StoreError::from)?;
        let stale =
            rec.expires_at <= now || (rec.state == "in_flight" && rec.created_at + IN_FLIGHT_LEASE_MICROS <= now);
        if stale {
            on_conn!(&mut tx, c => sqlx::query(
                "UPDATE idempotency_records SET request_hash = $1, state = 'in_flight', status_code = NULL, response_headers = NULL,
                 response_body = NULL, created_at = $2, expires_at = $3 WHERE credential_id = $4 AND idem_key = $5")
                .bind(hash).bind(now).bind(now + ttl_micros).bind(credential).bind(key)
                .execute(&mut *c).await.map(|_| ()))
            .map_err(StoreError::from)?;
        } else if rec.state == "in_flight" {
            return Err(in_use());
        } else if rec.request_hash != hash {
            return Err(reused());
        } else {
            return Ok(Begin::Replay(replay(rec.status_code, rec.response_headers.as_deref(), rec.response_body)?));
        }
    }
    tx.commit().await?;
    Ok(Begin::Proceed)
}

/// The stored answer as it is replayed: its status, the headers kept (as [`kept_json`] wrote
/// them) and its body, marked `Idempotent-Replayed: true`. Shared by every record store.
pub fn replay(status_code: Option<i64>, headers: Option<&str>, body: Option<Vec<u8>>) -> Result<Response, ApiError> {
    let status = status_code
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| StoreError::Corrupt { what: "idempotency status", reason: format!("{status_code:?}") })?;
    let mut res = (status, Bytes::from(body.unwrap_or_default())).into_response();
    let headers: Vec<(String, String)> = match headers {
        Some(h) => runway_store::stored_json("idempotency response headers", h)?,
        None => Vec::new(),
    };
    // The stored values replace what the bytes' response set (its content type); a name
    // stored several times (set-cookie) keeps every value.
    let mut seen: Vec<HeaderName> = Vec::new();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
            if seen.contains(&k) {
                res.headers_mut().append(k, v);
            } else {
                seen.push(k.clone());
                res.headers_mut().insert(k, v);
            }
        }
    }
    res.headers_mut().insert(REPLAYED, HeaderValue::from_static("true"));
    Ok(res)
}

/// The headers named in `kept`, every value, as stored beside an answer for [`replay`].
pub fn kept_json(headers: &HeaderMap, kept: &[HeaderName]) -> String {
    let kept: Vec<(String, String)> = kept
        .iter()
        .flat_map(|h| {
            headers.get_all(h).iter().filter_map(|v| v.to_str().ok()).map(|v| (h.as_str().to_owned(), v.to_owned()))
        })
        .collect();
    serde_json::to_string(&kept).unwrap_or_else(|_| "[]".into())
}

/// Stores the answer under the key; the headers named in `kept` are replayed with it. When
/// the store refuses, the key is released, so a retry runs again rather than waiting.
pub async fn complete(
    store: &Store,
    credential: &str,
    key: &str,
    status: StatusCode,
    headers: &HeaderMap,
    kept: &[HeaderName],
    body: &[u8],
) {
    let kept = kept_json(headers, kept);
    let result = async {
        let mut tx = store.write(DbScope::Platform).await?;
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
        forget(store, credential, key).await;
    }
}

/// Releases the key (the request failed in a way the client may retry).
pub async fn forget(store: &Store, credential: &str, key: &str) {
    let result = async {
        let mut tx = store.write(DbScope::Platform).await?;
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
pub async fn purge_expired(store: &Store, now: i64) -> Result<u64, StoreError> {
    let mut tx = store.write(DbScope::Platform).await?;
    let n = on_conn!(&mut tx, c => sqlx::query("DELETE FROM idempotency_records WHERE expires_at <= $1")
        .bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    tx.commit().await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_header_of_visible_ascii() {
        let mut h = HeaderMap::new();
        assert_eq!(key_from(&h).unwrap(), None);
        h.insert(HEADER, HeaderValue::from_static("order-7"));
        assert_eq!(key_from(&h).unwrap().as_deref(), Some("order-7"));
        h.append(HEADER, HeaderValue::from_static("order-8"));
        assert!(key_from(&h).is_err(), "two keys");
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("has space"));
        assert!(key_from(&h).is_err());
    }

    #[test]
    fn the_hash_tells_requests_apart() {
        let a = request_hash("POST", "/orders", None, b"{}");
        assert_eq!(a, request_hash("POST", "/orders", Some(""), b"{}"));
        assert_ne!(a, request_hash("POST", "/orders", Some("x=1"), b"{}"));
        assert_ne!(a, request_hash("PATCH", "/orders", None, b"{}"));
        assert_ne!(a, request_hash("POST", "/orders", None, b"{ }"));
    }
}
