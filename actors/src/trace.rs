//! Which spans go to the trace exporter. Only those of the `tracing` target [`TARGET`] do, and
//! they are made only inside work that is traced: a request the edge sampled (or whose client's
//! `traceparent` said sampled), or a job run continuing one. Everything else (the other 99% of
//! requests at the default ratio, background polling) makes no span for the exporter at all:
//! deciding at the edge costs one random draw, where letting the exporter's layer see every
//! request and drop it at its sampler cost a third of a storefront read's throughput.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// The target of every exported span.
pub const TARGET: &str = "rampart::traced";

static SPANS: AtomicBool = AtomicBool::new(false);

/// Set once at start-up, before the actors run (`telemetry.otlp_endpoint` set).
pub fn export_spans(on: bool) {
    SPANS.store(on, Relaxed);
}

/// Whether the current work is traced: spans are exported and the current span is one of
/// them (a traced request, or a job run continuing one).
pub fn traced() -> bool {
    SPANS.load(Relaxed)
        && tracing::Span::current()
            .metadata()
            .is_some_and(|m| m.target() == TARGET)
}
