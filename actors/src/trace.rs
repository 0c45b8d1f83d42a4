//! Whether the actors make spans of their own (a database command, a cache load) for an
//! exporter. Off unless traces are exported: with the logs' default `info` filter, an INFO span
//! per command would otherwise be made and its fields formatted on every call, for nobody.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

static SPANS: AtomicBool = AtomicBool::new(false);

/// Set once at start-up, before the actors run (`telemetry.otlp_endpoint` set).
pub fn export_spans(on: bool) {
    SPANS.store(on, Relaxed);
}

/// Whether spans are exported.
pub fn spans() -> bool {
    SPANS.load(Relaxed)
}
