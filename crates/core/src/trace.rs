//! W3C trace context on HTTP headers, for the API's request spans and the gateway's proxied
//! requests alike: adopt the caller's `traceparent`, write ours for the next hop.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether spans go anywhere (an OTLP exporter is set up); see [`exporting`].
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Records that spans are exported (set once at start by the telemetry setup).
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// Whether spans are exported. Hot paths (the gateway) skip building spans nobody receives
/// and pass the trace on with [`next_hop_traceparent`] instead.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The `traceparent` for the next hop when spans are not exported: the caller's trace (a new
/// one, sampled, when it sent none or a malformed one) with a new span id of this hop, so the
/// upstream's spans hang under this hop as they would with an exporter.
pub fn next_hop_traceparent(headers: &axum::http::HeaderMap) -> axum::http::HeaderValue {
    let incoming = headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(|v| {
        let mut parts = v.trim().split('-');
        let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let valid = version == "00"
            && parts.next().is_none()
            && is_hex(trace, 32)
            && trace != "00000000000000000000000000000000"
            && is_hex(parent, 16)
            && is_hex(flags, 2);
        valid.then(|| (trace.to_owned(), flags.to_owned()))
    });
    let (trace, flags) = incoming.unwrap_or_else(|| (format!("{:032x}", fastrand::u128(1..)), "01".to_owned()));
    let value = format!("00-{trace}-{:016x}-{flags}", fastrand::u64(1..));
    axum::http::HeaderValue::from_str(&value).unwrap_or_else(|_| axum::http::HeaderValue::from_static(""))
}

struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut axum::http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        if let (Ok(k), Ok(v)) =
            (axum::http::HeaderName::from_bytes(key.as_bytes()), axum::http::HeaderValue::from_str(&value))
        {
            self.0.insert(k, v);
        }
    }
}

/// Makes the incoming `traceparent` (if any) the parent of `span`.
pub fn adopt_parent(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if headers.contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(cx);
    }
}

/// Writes `span`'s trace context as `traceparent` into `headers`, for responses and outbound
/// calls.
pub fn inject(span: &tracing::Span, headers: &mut axum::http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_hop_continues_the_callers_trace_with_a_span_of_its_own() {
        let mut h = axum::http::HeaderMap::new();
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".parse().unwrap());
        let next = next_hop_traceparent(&h);
        let parts: Vec<&str> = next.to_str().unwrap().split('-').collect();
        assert_eq!((parts[0], parts[1], parts[3]), ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "00"));
        assert!(is_hex(parts[2], 16) && parts[2] != "00f067aa0ba902b7" && parts[2] != "0000000000000000");
    }

    #[test]
    fn a_missing_or_malformed_traceparent_starts_a_sampled_trace() {
        let mut h = axum::http::HeaderMap::new();
        for bad in [
            None,
            Some("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("00-XYZ-00f067aa0ba902b7-01"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ] {
            if let Some(v) = bad {
                h.insert("traceparent", v.parse().unwrap());
            }
            let next = next_hop_traceparent(&h);
            let parts: Vec<&str> = next.to_str().unwrap().split('-').collect();
            assert_eq!(parts.len(), 4, "{next:?}");
            assert!(is_hex(parts[1], 32) && parts[1] != "4bf92f3577b34da6a3ce929d0e0e4736", "{next:?}");
            assert_eq!(parts[3], "01");
        }
    }
}
