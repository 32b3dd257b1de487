//! Logs and traces.
//!
//! - Logs: `RUST_LOG` filters (default `info`), `LOG_FORMAT` picks pretty or JSON lines.
//!   It filters only what is printed: spans are traced at `info` whatever it says.
//!   Repeated warnings and errors are summarised (`log_summary.rs`).
//!   A request's and an event's log lines carry their span's fields (`request_id`,
//!   `event_id`, ...).
//! - Traces: every span also becomes an OpenTelemetry span. Trace context crosses the
//!   stream hop as the W3C `traceparent` of the producing span: [`outbox`](crate::outbox)
//!   stores it with the event, the consumer makes it the parent of the span that handles
//!   the event, so one trace runs POST -> payment -> status update (SPEC §8). With
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are exported over OTLP/HTTP; without it no
//!   exporter runs, and only ids are made and propagated (`telemetry/trace_ids.rs`).

mod trace_ids;

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{FilterExt, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::log_summary::Summarise;
use crate::settings::LogFormat;
use trace_ids::{TraceIdLayer, TraceIds, with_ids};

/// The W3C header and stream field that carry trace context.
pub const TRACEPARENT: &str = "traceparent";

/// How a process reports.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// The `service.name` of its traces and logs.
    pub service_name: &'static str,
    /// Pretty or JSON logs.
    pub log_format: LogFormat,
    /// Print log lines at all (tests keep them quiet unless `TEST_LOG=1`).
    pub print_logs: bool,
    /// OTLP/HTTP collector, e.g. `http://otel-collector:4318`.
    pub otlp_endpoint: Option<String>,
    /// Warnings and errors of one cause are printed once per this interval, then
    /// summarised; `None` prints every one.
    pub summary_interval: Option<Duration>,
}

/// Keeps the trace pipeline alive; dropping it flushes spans not yet exported.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber. A second call in one process (several services in one
/// test) keeps the first and returns an inert handle.
pub fn init(config: &TelemetryConfig) -> Telemetry {
    let exporter = config.otlp_endpoint.as_ref().and_then(|endpoint| {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .build()
            .inspect_err(|e| {
                eprintln!(
                    "{}: cannot export traces to {endpoint}: {e}",
                    config.service_name
                )
            })
            .ok()
    });
    // With an exporter, every span becomes an OpenTelemetry span; without one, spans
    // only get their ids.
    let provider = exporter.map(|exporter| {
        SdkTracerProvider::builder()
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name)
                    .build(),
            )
            .with_batch_exporter(exporter)
            .build()
    });

    // `RUST_LOG` filters what is printed, not what is traced: spans stay on at `info`
    // whatever the log level, so trace context is made and propagated regardless.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let summarise = config.summary_interval.map(Summarise::new);
    let logs = config.print_logs.then(|| {
        match config.log_format {
            // File and line name each line's cause, as the summaries do.
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_file(true)
                .with_line_number(true)
                .boxed(),
            LogFormat::Pretty => tracing_subscriber::fmt::layer().boxed(),
        }
        .with_filter(filter.and(summarise.clone()))
    });
    // Exported spans carry their fields; source locations, thread ids and busy/idle
    // timing per poll are left out: they cost on every request and event and say little
    // here. Nor is a span's OpenTelemetry context made the thread's current one each time
    // its future is polled: nothing in these processes reads it (trace context is taken
    // from the span itself, `traceparent_of`), and it was a sixth of what tracing cost
    // order-service (docs/performance.md, 2026-12-05, later).
    let exported = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(config.service_name))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(LevelFilter::INFO)
    });
    let ids_only = provider
        .is_none()
        .then(|| TraceIdLayer.with_filter(LevelFilter::INFO));
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(exported)
        .with(ids_only)
        .try_init()
        .is_ok();
    if installed {
        if let Some(summarise) = summarise.filter(|_| config.print_logs) {
            summarise.spawn_flusher();
        }
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        Telemetry { provider }
    } else {
        Telemetry { provider: None }
    }
}

/// The `traceparent` of the current span, if it belongs to a trace.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The `traceparent` of `span`, if it belongs to a trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    with_ids(span, |ids| ids.traceparent()).or_else(|| {
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
        carrier.remove(TRACEPARENT)
    })
}

/// Makes the trace named by `traceparent` the parent of `span`. Call before entering
/// the span. A malformed value is ignored: the span starts a trace of its own.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    let parent = TraceContextPropagator::new().extract(&Traceparent(traceparent));
    let caller = parent.span().span_context().clone();
    let continued = with_ids(span, |ids| {
        *ids = if caller.is_valid() {
            TraceIds {
                trace_id: caller.trace_id(),
                flags: caller.trace_flags(),
                ..*ids
            }
        } else {
            TraceIds::root()
        }
    });
    if continued.is_none() {
        let _ = span.set_parent(parent);
    }
}

/// A carrier of one `traceparent`.
struct Traceparent<'a>(&'a str);

impl Extractor for Traceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// The trace id (32 hex digits) of a `traceparent`.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1).filter(|id| id.len() == 32)
}
