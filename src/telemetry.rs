//! Logs and traces. Logs: readable in development, JSON lines in production; `RUST_LOG`
//! overrides `log.filter`. Traces: with `telemetry.otlp_endpoint` set, the spans of the existing
//! `tracing` instrumentation go to that OpenTelemetry collector over OTLP/HTTP (protobuf, to
//! `<endpoint>/v1/traces`), batched on a thread of the SDK's own, off the request path; a new
//! trace is kept with probability `telemetry.sample_ratio`, and an incoming `traceparent` that
//! says sampled is always kept. Unset, no OpenTelemetry layer is installed at all and the spans
//! made only for traces (commands, cache loads, job runs) are not made: a request costs a few
//! relaxed atomic loads more.
//!
//! What the spans are (their names in a trace view):
//! - `GET /api/v1/stores/{merchant_id}/products` (the request: route template, status, request
//!   id, the client's trace context as parent);
//! - `db <Command>` (one database command: its name, the replica when it ran on one, the wait for
//!   a connection and the work as separate fields);
//! - `cache load` (a miss: which tier answered);
//! - `job <kind>` (one run, child of the request that enqueued it: the context is stored with
//!   the job's row), and inside a webhook's run the delivery, whose request carries
//!   `traceparent`.

use crate::settings::{LogFormat, LogSettings, TelemetrySettings};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Whether spans are exported: set once, before the first request.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// What must be flushed before the process exits.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still buffered (bounded by the SDK's own timeout). Blocking: call it
    /// outside the async runtime, as the process ends.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("rampart: flushing traces: {e}");
            }
        }
    }
}

pub fn init(log: &LogSettings, telemetry: &TelemetrySettings) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.filter));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match log.format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
        LogFormat::Pretty => fmt.compact().boxed(),
    }
    .with_filter(filter);
    let provider = telemetry.otlp_endpoint.as_deref().and_then(|endpoint| {
        provider(endpoint, telemetry.sample_ratio)
            .map_err(|e| eprintln!("rampart: traces are not exported: {e}"))
            .ok()
    });
    // The service's own spans, whatever `log.filter` lets through to the logs.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("rampart"))
            .with_filter(
                Targets::new()
                    .with_target("rampart", LevelFilter::INFO)
                    .with_target("rampart_actors", LevelFilter::INFO),
            )
    });
    EXPORTING.store(otel.is_some(), Relaxed);
    rampart_actors::trace::export_spans(otel.is_some());
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Telemetry { provider }
}

fn provider(endpoint: &str, ratio: f64) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .map_err(|e| e.to_string())?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("rampart")
                .build(),
        )
        .build())
}

/// Whether spans are exported (`telemetry.otlp_endpoint` set).
pub fn exporting() -> bool {
    EXPORTING.load(Relaxed)
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersOut<'a>(&'a mut HeaderMap);

impl Injector for HeadersOut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Makes the client's trace context (`traceparent`) the parent of `span`, and records the
/// trace id on it so that every log line of the request carries it. Before `span` is entered.
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    if !exporting() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    let _ = span.set_parent(parent);
    record_trace_id(span);
}

fn record_trace_id(span: &tracing::Span) {
    let context = span.context();
    let trace = context.span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(trace));
}

/// Names `span` in the trace (a request's, once it is routed). `otel.name` recorded late is
/// not enough: the span has started by then (its context was read for the logs' trace id).
pub fn rename(span: &tracing::Span, name: String) {
    if exporting() {
        span.context().span().update_name(name);
    }
}

/// The current span's context as a `traceparent` value, to store with what continues the
/// trace later (a job's row). `None` when nothing is exported.
pub fn traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Adds the current span's `traceparent` to an outgoing request's headers.
pub fn inject(headers: &mut HeaderMap) {
    if exporting() {
        TraceContextPropagator::new().inject_context(
            &tracing::Span::current().context(),
            &mut HeadersOut(headers),
        );
    }
}

/// Makes the stored `traceparent` (of the request that enqueued a job) the parent of `span`.
pub fn continue_stored(span: &tracing::Span, traceparent: Option<&str>) {
    let (true, Some(traceparent)) = (exporting(), traceparent) else {
        return;
    };
    let carrier =
        std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
    record_trace_id(span);
}
