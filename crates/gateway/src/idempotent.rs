//! Edge idempotency for routes that enable it: the request's key is claimed through
//! `runway-idempotency` (the API's own records, the credential namespaced `gateway:`), and the
//! upstream's answer is stored before it is sent — only when the upstream answered below 500,
//! the whole body arrived and it fits the route's bound; otherwise the key is released so the
//! client can try again.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, Response};
use axum::response::IntoResponse;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use runway_store::Store;

/// Which key, under which credential, to complete or release.
pub struct Claim {
    pub store: Store,
    pub credential: String,
    pub key: String,
}

impl Claim {
    /// Releases the key (the upstream was not reached, or answered 5xx) before the answer goes
    /// out, so the client's retry finds it free.
    pub async fn release(self) {
        runway_idempotency::forget(&self.store, &self.credential, &self.key).await;
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
    runway_idempotency::complete(
        &claim.store,
        &claim.credential,
        &claim.key,
        parts.status,
        &parts.headers,
        &kept,
        &buf,
    )
    .await;
    Response::from_parts(parts, Body::from(buf))
}
