//! Logs and traces. Logs: readable in development, JSON lines in production; `RUST_LOG`
//! overrides `log.filter`. Traces: with `telemetry.otlp_endpoint` set, the spans of the existing
//! `tracing` instrumentation go to that OpenTelemetry collector over OTLP/HTTP (protobuf, to
//! `<endpoint>/v1/traces`), batched on a thread of the SDK's own, off the request path. The edge
//! decides which requests are traced: one whose `traceparent` says sampled always, one without
//! a `traceparent` with probability `telemetry.sample_ratio`; only traced work makes the spans
//! the exporter sees ([`rampart_actors::trace`]). Unset, no OpenTelemetry layer is installed and
//! a request costs a relaxed atomic load more.
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
use rampart_actors::trace::TARGET;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Whether spans are exported, and the share of new traces kept (`f64` bits): set once,
/// before the first request.
static EXPORTING: AtomicBool = AtomicBool::new(false);
static RATIO: AtomicU64 = AtomicU64::new(0);

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
        provider(endpoint)
            .map_err(|e| eprintln!("rampart: traces are not exported: {e}"))
            .ok()
    });
    // The traced spans only ([`TARGET`]), whatever `log.filter` lets through to the logs: the
    // edge decides which requests are traced ([`traced_parent`]), so every span that reaches
    // the exporter is kept.
    let otel = provider.as_ref().map(|p| {
        // Only what a trace view needs: no source locations, thread names, targets or busy and
        // idle timings per span, and no OpenTelemetry context made current on each poll
        // (nothing here reads it).
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("rampart"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(Targets::new().with_target(TARGET, LevelFilter::TRACE))
    });
    EXPORTING.store(otel.is_some(), Relaxed);
    RATIO.store(telemetry.sample_ratio.clamp(0.0, 1.0).to_bits(), Relaxed);
    rampart_actors::trace::export_spans(otel.is_some());
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Telemetry { provider }
}

fn provider(endpoint: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .map_err(|e| e.to_string())?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // Sampled at the edge already: what reaches the SDK is kept.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
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

/// Whether a request is traced, and its parent: the client's context when its `traceparent`
/// is valid (traced only if it says sampled), else a new trace kept with probability
/// `telemetry.sample_ratio`. `None`: not traced (or nothing is exported).
pub fn traced_parent(headers: &HeaderMap) -> Option<opentelemetry::Context> {
    if !exporting() {
        return None;
    }
    if headers.contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let client = parent.span().span_context().clone();
        if client.is_valid() {
            return client.is_sampled().then_some(parent);
        }
    }
    (rand::random::<f64>() < f64::from_bits(RATIO.load(Relaxed))).then(opentelemetry::Context::new)
}

/// Makes `parent` the parent of a traced span and records the trace id on it, so that every
/// log line of the work carries it. Before `span` is entered.
pub fn adopt(span: &tracing::Span, parent: opentelemetry::Context) {
    let _ = span.set_parent(parent);
    let context = span.context();
    let trace = context.span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(trace));
}

/// The parent a job run continues: the `traceparent` stored with the job, when it says
/// sampled. `None`: the run is not traced.
pub fn stored_parent(traceparent: Option<&str>) -> Option<opentelemetry::Context> {
    let (true, Some(traceparent)) = (exporting(), traceparent) else {
        return None;
    };
    let carrier =
        std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    let sampled = parent.span().span_context().is_sampled();
    sampled.then_some(parent)
}

/// Names a traced span (a request's, once it is routed; a span that is not exported has no
/// context, and this does nothing). `otel.name` recorded late is not
/// enough: the span has started by then (its context was read for the logs' trace id).
pub fn rename(span: &tracing::Span, name: String) {
    span.context().span().update_name(name);
}

/// The current span's context as a `traceparent` value, to store with what continues the
/// trace later (a job's row). `None` when the current work is not traced.
pub fn traceparent() -> Option<String> {
    if !rampart_actors::trace::traced() {
        return None;
    }
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Adds the current span's `traceparent` to an outgoing request's headers (traced work only).
pub fn inject(headers: &mut HeaderMap) {
    if rampart_actors::trace::traced() {
        TraceContextPropagator::new().inject_context(
            &tracing::Span::current().context(),
            &mut HeadersOut(headers),
        );
    }
}
