//! Logs and traces: `tracing` with pretty or JSON output, W3C trace context, and OTLP export
//! when an endpoint is configured.

use opentelemetry::trace::TracerProvider as _;

use opentelemetry_sdk::trace::SdkTracerProvider;
use runway_core::config::{Config, LogFormat};
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber once per process; later calls (tests) are no-ops.
pub fn init(config: &Config) {
    if PROVIDER.get().is_some() {
        return;
    }
    let mut builder = SdkTracerProvider::builder();
    let mut otlp_error = None;
    if let Some(endpoint) = &config.telemetry.otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let endpoint = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        match opentelemetry_otlp::SpanExporter::builder().with_http().with_endpoint(endpoint).build() {
            // The batch exporter sends from its own thread: a slow or failing collector
            // never holds up a request.
            Ok(exporter) => {
                builder = builder.with_batch_exporter(exporter);
                runway_core::trace::set_exporting(true);
            }
            Err(e) => otlp_error = Some(e.to_string()),
        }
    }
    let name = config.telemetry.service_name.clone().unwrap_or_else(|| "runway".into());
    let provider =
        builder.with_resource(opentelemetry_sdk::Resource::builder().with_service_name(name).build()).build();
    let tracer = provider.tracer("runway");
    let _ = PROVIDER.set(provider);

    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Traces keep request spans whatever the log level, so trace context always propagates;
    // the log filter applies to log output only.
    let otel =
        tracing_opentelemetry::layer().with_tracer(tracer).with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let registry = tracing_subscriber::registry().with(otel);
    let result = match config.log.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Pretty => {
            registry.with(tracing_subscriber::fmt::layer().with_target(false).with_filter(filter)).try_init()
        }
    };
    if result.is_ok()
        && let Some(e) = otlp_error
    {
        tracing::warn!(error = %e, "OTLP exporter could not be set up; traces are not exported");
    }
}

/// Sends buffered spans before exit.
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.shutdown();
    }
}

pub use runway_core::trace::{adopt_parent, inject};
