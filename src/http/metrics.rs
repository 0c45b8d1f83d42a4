//! Prometheus metrics: HTTP counts and latency by route and status, recorded by a middleware;
//! at scrape time, the registry followed by the figures read then (`figures.rs`,
//! `guard_figures.rs`).

use crate::http::figures::{resources, Figures, Text};
use crate::http::guard_figures;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    /// Requests by status class (1xx..5xx), for people.
    by_class: [AtomicU64; 5],
    started: Instant,
}

/// Requests served since start, for people.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RequestCounts {
    pub total: u64,
    /// By status class: `2xx`, `4xx`...
    pub by_status_class: BTreeMap<String, u64>,
    pub uptime_secs: u64,
    /// The mean rate since start.
    pub per_second: f64,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route and status"),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route and status",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["method", "route", "status"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            by_class: Default::default(),
            started: Instant::now(),
        })
    }

    pub fn counts(&self) -> RequestCounts {
        let by_status_class: BTreeMap<String, u64> = self
            .by_class
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("{}xx", i + 1), n.load(Relaxed)))
            .collect();
        let total = by_status_class.values().sum();
        let uptime = self.started.elapsed().as_secs_f64();
        RequestCounts {
            total,
            by_status_class,
            uptime_secs: uptime as u64,
            per_second: (total as f64 / uptime.max(1.0) * 10.0).round() / 10.0,
        }
    }

    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        if let Some(class) = self.by_class.get(usize::from(status / 100).wrapping_sub(1)) {
            class.fetch_add(1, Relaxed);
        }
        let status = status.to_string();
        let labels = [method, route, status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.latency.with_label_values(&labels).observe(seconds);
    }

    /// The text exposition: registry metrics, then the figures read now.
    pub fn render(&self, figures: &Figures<'_>) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        let mut out = String::from_utf8(buf).unwrap_or_default();
        let mut text = Text(&mut out);
        resources(&mut text, figures);
        guard_figures::guardians(&mut text, &figures.guardians);
        guard_figures::jobs(&mut text, &figures.jobs);
        guard_figures::process(&mut text, &figures.guardians);
        out
    }
}

/// The route pattern a resource serves, attached to it as app data for the metrics' labels.
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel(pub &'static str);

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let method = req.method().clone();
    let response = next.call(req).await?;
    let took = started.elapsed();
    let slow = response
        .request()
        .app_data::<web::Data<crate::state::AppState>>()
        .map_or(0, |s| s.settings.log.slow_request_ms);
    if slow > 0 && took.as_millis() >= u128::from(slow) {
        // Inside the request's span: the line carries its request id.
        tracing::warn!(
            method = %method,
            path = response.request().path(),
            status = response.status().as_u16(),
            took_ms = took.as_millis() as u64,
            "slow request"
        );
    }
    if let Some(metrics) = metrics {
        // The label the resource carries (or the storefront's router set): `match_pattern()`
        // would run the routing regexes again.
        let request = response.request();
        let label = request.extensions().get::<RouteLabel>().copied();
        let route = label
            .or_else(|| request.app_data::<RouteLabel>().copied())
            .map_or("unmatched", |label| label.0);
        metrics.observe(
            method.as_str(),
            route,
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
    }
    Ok(response)
}

/// This process's resident set size.
pub fn resident_memory() -> Option<u64> {
    let pid = sysinfo::get_current_pid().ok()?;
    let mut system = sysinfo::System::new().ok()?;
    system.refresh_processes_specifics(
        sysinfo::ProcessesToUpdate::Some(&[pid]),
        true,
        sysinfo::ProcessRefreshKind::nothing().with_memory(),
    );
    system.process(pid).map(|p| p.memory())
}
