//! Edge idempotency for routes that enable it: the request's key is claimed — in the store
//! through `runway-idempotency` (the API's own records, the credential namespaced `gateway:`),
//! or in Redis when `gateway.redis_url` is set ([`crate::shared_idempotency`]) — and the
//! upstream's answer is stored before it is sent — only when the upstream answered below 500,
//! the whole body arrived and it fits the route's bound; otherwise the key is released so the
//! client can try again.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, Response};
use axum::response::IntoResponse;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use runway_core::config::RedisFailure;
use runway_core::{ApiError, ErrorCode};
use runway_store::Store;
use std::sync::Arc;

use crate::shared_idempotency::{self, SharedIdempotency};

/// Where a route's records are kept.
#[derive(Clone)]
pub enum Records {
    /// The store's `idempotency_records`, beside the API's.
    Store(Store),
    /// Redis, shared by every replica; the store when Redis is down and `redis_failure = "open"`.
    Redis(Arc<SharedIdempotency>, Store),
}

/// Which key, under which credential, for which request, to complete or release.
pub struct Claim {
    records: Records,
    credential: String,
    key: String,
    hash: String,
    ttl_secs: u64,
}

/// What [`begin`] decided.
pub enum Begin {
    Proceed(Claim),
    /// The stored answer, sent as it is.
    Replay(Response<Body>),
}

/// Claims `key` for this request (`credential` already namespaced), or answers: the stored
/// answer, 409 while the first request runs, 422 for another request; with Redis unreachable,
/// the store's records (`open`) or 503 (`closed`).
pub async fn begin(
    records: &Records,
    now: i64,
    ttl_secs: u64,
    credential: String,
    key: String,
    hash: String,
) -> Result<Begin, ApiError> {
    let ttl = i64::try_from(ttl_secs).unwrap_or(i64::MAX / 2_000_000) * 1_000_000;
    let claim = |records: Records| Claim {
        records,
        credential: credential.clone(),
        key: key.clone(),
        hash: hash.clone(),
        ttl_secs,
    };
    let store = match records {
        Records::Store(store) => store,
        Records::Redis(shared, store) => match shared.begin(&credential, &key, &hash).await {
            shared_idempotency::Begin::Proceed => return Ok(Begin::Proceed(claim(records.clone()))),
            shared_idempotency::Begin::InFlight => return Err(runway_idempotency::in_use()),
            shared_idempotency::Begin::Reused => return Err(runway_idempotency::reused()),
            shared_idempotency::Begin::Stored { status, headers, body } => {
                let res = runway_idempotency::replay(Some(status), Some(&headers), Some(body))?;
                return Ok(Begin::Replay(res));
            }
            shared_idempotency::Begin::Unreachable => match shared.link().failure {
                RedisFailure::Open => store,
                RedisFailure::Closed => {
                    return Err(ApiError::new(
                        ErrorCode::Unavailable,
                        "the shared idempotency store cannot be reached",
                    )
                    .with_retry_after(1));
                }
            },
        },
    };
    match runway_idempotency::begin(store, now, ttl, &credential, &key, &hash).await? {
        runway_idempotency::Begin::Replay(res) => Ok(Begin::Replay(res)),
        runway_idempotency::Begin::Proceed => Ok(Begin::Proceed(claim(Records::Store(store.clone())))),
    }
}

impl Claim {
    /// Releases the key (the upstream was not reached, or answered 5xx) before the answer goes
    /// out, so the client's retry finds it free.
    pub async fn release(self) {
        match &self.records {
            Records::Store(store) => runway_idempotency::forget(store, &self.credential, &self.key).await,
            Records::Redis(shared, _) => shared.release(&self.credential, &self.key, &self.hash).await,
        }
    }

    async fn complete(&self, status: axum::http::StatusCode, headers: &HeaderMap, kept: &[HeaderName], body: &[u8]) {
        match &self.records {
            Records::Store(store) => {
                runway_idempotency::complete(store, &self.credential, &self.key, status, headers, kept, body).await
            }
            Records::Redis(shared, _) => {
                shared
                    .complete(&self.credential, &self.key, &self.hash, self.ttl_secs, status, headers, kept, body)
                    .await
            }
        }
    }
}

/// Response headers a replay carries (hop-by-hop ones were removed before).
fn kept_headers(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .keys()
        .filter(|k| {
            !matches!(k.as_str(), "date" | "content-length" | "x-request-id" | "ratelimit" | "ratelimit-policy")
        })
        .cloned()
        .collect()
}

/// Reads the upstream's answer (up to `max` bytes), stores it under the claim and returns it,
/// so a retry that follows the answer finds it stored. An answer over `max` is passed on
/// whole — what was read, then the rest as it streams — and the key released; one that
/// breaks off is a 502 and releases the key.
pub async fn store_answer(
    claim: Claim,
    parts: axum::http::response::Parts,
    mut body: Body,
    max: usize,
) -> Response<Body> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue };
                if buf.len() + data.len() > max {
                    metrics::counter!("runway_gateway_idempotency_not_stored_total", "reason" => "too_large")
                        .increment(1);
                    claim.release().await;
                    buf.extend_from_slice(&data);
                    let head = futures_util::stream::once(async move { Ok::<Bytes, axum::Error>(Bytes::from(buf)) });
                    let rest = head.chain(body.into_data_stream());
                    return Response::from_parts(parts, Body::from_stream(rest));
                }
                buf.extend_from_slice(&data);
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the upstream's answer broke off; the idempotency key is released");
                claim.release().await;
                return runway_core::ApiError::new(
                    runway_core::ErrorCode::BadGateway,
                    "the upstream closed the connection in the middle of its answer",
                )
                .into_response();
            }
            None => break,
        }
    }
    let kept = kept_headers(&parts.headers);
    claim.complete(parts.status, &parts.headers, &kept, &buf).await;
    Response::from_parts(parts, Body::from(buf))
}
