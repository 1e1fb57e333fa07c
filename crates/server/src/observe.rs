//! Per-request observability: the request span (request id, tenant, route template, status,
//! latency), W3C trace context in and out, and RED metrics per route template.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Instant;
use tracing::Instrument;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use.
pub(crate) fn prometheus() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("runway_http_request_duration_seconds".into()),
                &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            )
            .expect("bucket list is not empty")
            // The SLI records' bounds, so a latency SLO's threshold is an `le` bucket in the
            // Prometheus rules Runway exports for it.
            .set_buckets_for_metric(
                Matcher::Full("runway_gateway_request_duration_seconds".into()),
                &runway_gateway::sli::bounds_ms().iter().map(|ms| f64::from(*ms) / 1000.0).collect::<Vec<_>>(),
            )
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // In tests several servers share a process; the first recorder wins and serves all.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

const REQUEST_ID: &str = runway_core::id::REQUEST_ID_HEADER;

/// Outermost middleware on every route.
pub async fn observe(mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let id = runway_core::id::request_id(req.headers());
    if let Ok(v) = HeaderValue::from_str(&id) {
        req.headers_mut().insert(REQUEST_ID, v);
    }
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        route = %route,
        tenant_id = tracing::field::Empty,
        credential = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    crate::telemetry::adopt_parent(&span, req.headers());
    let mut res = next.run(req).instrument(span.clone()).await;
    let elapsed = start.elapsed();
    let status = res.status().as_u16();
    span.record("status", status);
    span.record("latency_ms", elapsed.as_secs_f64() * 1000.0);
    span.in_scope(|| {
        if status >= 500 {
            tracing::error!("request failed");
        } else {
            tracing::info!("request done");
        }
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    crate::telemetry::inject(&span, res.headers_mut());
    let class = runway_core::labels::status_class(status);
    // Bounded: a client may send any method name, and each would be a new series.
    let method = match method.as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m.to_owned(),
        _ => "other".to_owned(),
    };
    let labels = [("route", route), ("method", method)];
    metrics::counter!("runway_http_requests_total", &[&labels[..], &[("status_class", class.to_owned())]].concat())
        .increment(1);
    metrics::histogram!("runway_http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
    res
}

/// Sets the store pool gauges just before a scrape.
pub fn record_pool_gauges(store: &runway_store::Store) {
    for p in store.pool_stats() {
        let pool = p.name;
        metrics::gauge!("runway_store_pool_connections", "pool" => pool, "state" => "idle").set(f64::from(p.idle));
        metrics::gauge!("runway_store_pool_connections", "pool" => pool, "state" => "in_use")
            .set(f64::from(p.size.saturating_sub(p.idle)));
        metrics::gauge!("runway_store_pool_max_connections", "pool" => pool).set(f64::from(p.max));
    }
}
