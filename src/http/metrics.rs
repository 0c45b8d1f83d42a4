//! Prometheus metrics: HTTP counts and latency by route and status, recorded by a middleware;
//! actor, pool and process figures read at scrape time.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use rampart_actors::db::PoolSnapshot;
use rampart_actors::StatsSnapshot;
use rampart_actors::{
    CacheSnapshot, CircuitSnapshot, LimitSnapshot, LimiterSnapshot, MemoryLevel, MemorySnapshot,
    QueueCounts, QueueHealth, SharedTierSnapshot,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
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
    pub fn render(
        &self,
        actors: &[StatsSnapshot],
        pool: Option<&PoolSnapshot>,
        cache: Option<&CacheSnapshot>,
        shared: Option<&SharedTierSnapshot>,
        guardians: &Guardians<'_>,
        jobs: &JobFigures<'_>,
    ) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        let mut out = String::from_utf8(buf).unwrap_or_default();
        let mut family =
            |name: &str,
             kind: &str,
             help: &str,
             rows: &mut dyn Iterator<Item = (String, String)>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (labels, value) in rows {
                    let _ = writeln!(out, "{name}{labels} {value}");
                }
            };
        let by_actor = |f: fn(&StatsSnapshot) -> String| {
            actors
                .iter()
                .map(move |a| (format!("{{actor=\"{}\"}}", a.name), f(a)))
        };
        family(
            "actor_mailbox_depth",
            "gauge",
            "Messages waiting in the actor's mailbox",
            &mut by_actor(|a| a.mailbox_depth.to_string()),
        );
        family(
            "actor_mailbox_capacity",
            "gauge",
            "Mailbox capacity",
            &mut by_actor(|a| a.mailbox_capacity.to_string()),
        );
        family(
            "actor_messages_handled_total",
            "counter",
            "Messages handled",
            &mut by_actor(|a| a.handled.to_string()),
        );
        family(
            "actor_messages_refused_total",
            "counter",
            "Messages refused because the mailbox was full",
            &mut by_actor(|a| a.refused.to_string()),
        );
        family(
            "actor_messages_expired_total",
            "counter",
            "Messages dropped because their caller had given up",
            &mut by_actor(|a| a.expired.to_string()),
        );
        family(
            "actor_restarts_total",
            "counter",
            "Restarts after a panic",
            &mut by_actor(|a| a.restarts.to_string()),
        );
        family(
            "actor_up",
            "gauge",
            "1 while the actor takes messages",
            &mut by_actor(|a| {
                u8::from(matches!(
                    a.state,
                    rampart_actors::ActorState::Running | rampart_actors::ActorState::Restarting
                ))
                .to_string()
            }),
        );
        if let Some(p) = pool {
            for (name, help, value) in [
                ("db_pool_max_connections", "Pool size limit", p.max_size),
                ("db_pool_connections", "Open connections", p.size),
                ("db_pool_idle_connections", "Idle connections", p.available),
                (
                    "db_pool_waiting",
                    "Callers waiting for a connection",
                    p.waiting,
                ),
                (
                    "db_commands_in_flight",
                    "Database commands running",
                    p.inflight,
                ),
                (
                    "db_commands_queued",
                    "Database commands waiting for a slot",
                    p.queued,
                ),
            ] {
                family(
                    name,
                    "gauge",
                    help,
                    &mut std::iter::once((String::new(), value.to_string())),
                );
            }
        }
        // One family per name, a row per tier.
        let tiers = |memory: Option<u64>, redis: Option<u64>| {
            [("memory", memory), ("redis", redis)]
                .into_iter()
                .filter_map(|(tier, v)| v.map(|v| (format!("{{tier=\"{tier}\"}}"), v.to_string())))
                .collect::<Vec<_>>()
        };
        family(
            "cache_hits_total",
            "counter",
            "Lookups answered by the tier",
            &mut tiers(cache.map(|c| c.hits), shared.map(|r| r.hits)).into_iter(),
        );
        family(
            "cache_misses_total",
            "counter",
            "Lookups the tier could not answer",
            &mut tiers(cache.map(|c| c.misses), shared.map(|r| r.misses)).into_iter(),
        );
        if let Some(c) = cache {
            let lookups = c.hits + c.misses;
            for (name, kind, help, value) in [
                (
                    "cache_stale_hits_total",
                    "counter",
                    "Answers given from a stale entry after a failed load",
                    c.stale_hits.to_string(),
                ),
                (
                    "cache_loads_total",
                    "counter",
                    "Loads run (one per key however many callers missed it)",
                    c.loads.to_string(),
                ),
                (
                    "cache_coalesced_total",
                    "counter",
                    "Misses that waited for a load already running",
                    c.coalesced.to_string(),
                ),
                (
                    "cache_load_errors_total",
                    "counter",
                    "Loads that failed",
                    c.load_errors.to_string(),
                ),
                (
                    "cache_invalidations_total",
                    "counter",
                    "Keys and scopes invalidated",
                    c.invalidations.to_string(),
                ),
                (
                    "cache_evictions_total",
                    "counter",
                    "Entries evicted for room",
                    c.evictions.to_string(),
                ),
                (
                    "cache_entries",
                    "gauge",
                    "Entries in the in-process tier",
                    c.entries.to_string(),
                ),
                (
                    "cache_bytes",
                    "gauge",
                    "Bytes in the in-process tier",
                    c.bytes.to_string(),
                ),
                (
                    "cache_hit_ratio",
                    "gauge",
                    "Hits over lookups since start",
                    format!(
                        "{:.4}",
                        if lookups == 0 {
                            0.0
                        } else {
                            c.hits as f64 / lookups as f64
                        }
                    ),
                ),
            ] {
                family(
                    name,
                    kind,
                    help,
                    &mut std::iter::once((r#"{tier="memory"}"#.to_owned(), value)),
                );
            }
        }
        if let Some(r) = shared {
            let redis = r#"{tier="redis"}"#.to_owned();
            for (name, kind, help, value) in [
                (
                    "cache_redis_errors_total",
                    "counter",
                    "Redis commands that failed",
                    r.errors,
                ),
                (
                    "cache_redis_timeouts_total",
                    "counter",
                    "Redis commands past the command timeout",
                    r.timeouts,
                ),
                (
                    "cache_redis_skipped_total",
                    "counter",
                    "Redis commands skipped while its breaker was open",
                    r.skipped,
                ),
                (
                    "cache_invalidations_sent_total",
                    "counter",
                    "Invalidations broadcast to other instances",
                    r.invalidations_sent,
                ),
                (
                    "cache_invalidations_received_total",
                    "counter",
                    "Invalidations received from other instances",
                    r.invalidations_received,
                ),
                (
                    "cache_redis_up",
                    "gauge",
                    "1 while Redis answers and its breaker is closed",
                    u64::from(r.up),
                ),
            ] {
                family(
                    name,
                    kind,
                    help,
                    &mut std::iter::once((redis.clone(), value.to_string())),
                );
            }
        }
        let circuits = guardians.circuits;
        let by_circuit = |f: fn(&CircuitSnapshot) -> u64| {
            circuits
                .iter()
                .map(move |c| (format!("{{circuit=\"{}\"}}", c.name), f(c).to_string()))
        };
        family(
            "circuit_state",
            "gauge",
            "0 closed, 1 half-open, 2 open",
            &mut by_circuit(|c| u64::from(c.state.level())),
        );
        family(
            "circuit_refused_total",
            "counter",
            "Calls refused while the circuit was open",
            &mut by_circuit(|c| c.refused),
        );
        family(
            "circuit_failures_total",
            "counter",
            "Calls that failed",
            &mut by_circuit(|c| c.failures),
        );
        family(
            "circuit_opened_total",
            "counter",
            "Times the circuit opened",
            &mut by_circuit(|c| c.times_opened),
        );
        if let Some(limiter) = guardians.limiter {
            family(
                "rate_limit_decisions_total",
                "counter",
                "Rate limit decisions by class",
                &mut limiter.classes.iter().flat_map(|c| {
                    [("allowed", c.allowed), ("denied", c.denied)].map(|(d, n)| {
                        (
                            format!("{{class=\"{}\",decision=\"{d}\"}}", c.name),
                            n.to_string(),
                        )
                    })
                }),
            );
            family(
                "rate_limit_keys",
                "gauge",
                "Keys held in process by class",
                &mut limiter
                    .classes
                    .iter()
                    .map(|c| (format!("{{class=\"{}\"}}", c.name), c.keys.to_string())),
            );
            family(
                "rate_limit_fallbacks_total",
                "counter",
                "Decisions taken in process because Redis did not answer",
                &mut std::iter::once((String::new(), limiter.fallbacks.to_string())),
            );
        }
        let lanes = guardians.overload;
        let by_lane = |f: fn(&LimitSnapshot) -> u64| {
            lanes
                .iter()
                .map(move |(lane, o)| (format!("{{lane=\"{lane}\"}}"), f(o).to_string()))
        };
        family(
            "overload_limit",
            "gauge",
            "The edge's concurrency limit now, by lane",
            &mut by_lane(|o| o.limit as u64),
        );
        family(
            "overload_inflight",
            "gauge",
            "Requests holding a place under the limit, by lane",
            &mut by_lane(|o| o.inflight as u64),
        );
        family(
            "overload_queued",
            "gauge",
            "Requests waiting for a place under the limit, by lane",
            &mut by_lane(|o| o.queued as u64),
        );
        family(
            "overload_waited_total",
            "counter",
            "Requests admitted after waiting for a place, by lane",
            &mut by_lane(|o| o.waited),
        );
        family(
            "overload_shed_total",
            "counter",
            "Requests shed at the edge, by lane",
            &mut by_lane(|o| o.shed),
        );
        if let Some(m) = guardians.memory {
            let level = match m.level {
                MemoryLevel::Normal => 0,
                MemoryLevel::Warning => 1,
                MemoryLevel::Critical => 2,
            };
            for (name, help, value) in [
                (
                    "memory_level",
                    "0 normal, 1 warning, 2 critical",
                    f64::from(level),
                ),
                (
                    "memory_trend_bytes_per_second",
                    "Resident memory's slope over the window",
                    m.trend_bytes_per_sec,
                ),
                (
                    "memory_leak_suspected",
                    "1 while memory grows steadily",
                    f64::from(u8::from(m.leak_suspected)),
                ),
                (
                    "memory_available_bytes",
                    "The machine's available memory",
                    m.available_bytes as f64,
                ),
                (
                    "process_cpu_percent",
                    "The process's CPU use over the last interval",
                    f64::from(m.cpu_percent),
                ),
            ] {
                family(
                    name,
                    "gauge",
                    help,
                    &mut std::iter::once((String::new(), value.to_string())),
                );
            }
            family(
                "arbiter_lag_seconds",
                "gauge",
                "How late the latest timer fired on each watched arbiter",
                &mut m.arbiter_lag_ms.iter().map(|(name, ms)| {
                    (format!("{{arbiter=\"{name}\"}}"), (ms / 1000.0).to_string())
                }),
            );
        }
        if let Some(queues) = jobs.queues {
            let by_queue = |f: fn(&QueueHealth) -> String| {
                queues
                    .iter()
                    .map(move |q| (format!("{{queue=\"{}\"}}", q.queue), f(q)))
            };
            family(
                "jobs_queue_depth",
                "gauge",
                "Jobs waiting to run, due or scheduled for a retry (all instances)",
                &mut by_queue(|q| q.depth.to_string()),
            );
            family(
                "jobs_running",
                "gauge",
                "Jobs running now (all instances)",
                &mut by_queue(|q| q.running.to_string()),
            );
            family(
                "jobs_failed",
                "gauge",
                "Jobs whose last attempt failed, awaiting a retry",
                &mut by_queue(|q| q.failed.to_string()),
            );
            family(
                "jobs_dead",
                "gauge",
                "Jobs with no attempts left",
                &mut by_queue(|q| q.dead.to_string()),
            );
            family(
                "jobs_oldest_due_seconds",
                "gauge",
                "How long the oldest due job has waited",
                &mut by_queue(|q| q.oldest_due_secs.to_string()),
            );
        }
        family(
            "jobs_runs_total",
            "counter",
            "Job runs on this instance by queue and outcome",
            &mut jobs.runs.iter().flat_map(|q| {
                [
                    ("succeeded", q.succeeded),
                    ("retried", q.retried),
                    ("deferred", q.deferred),
                    ("dead", q.dead),
                    ("lease_lost", q.lease_lost),
                ]
                .map(|(outcome, n)| {
                    (
                        format!("{{queue=\"{}\",outcome=\"{outcome}\"}}", q.queue),
                        n.to_string(),
                    )
                })
            }),
        );
        family(
            "jobs_started_total",
            "counter",
            "Job runs started on this instance by queue",
            &mut jobs
                .runs
                .iter()
                .map(|q| (format!("{{queue=\"{}\"}}", q.queue), q.started.to_string())),
        );
        if let Some(rss) = guardians.rss_bytes {
            family(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory",
                &mut std::iter::once((String::new(), rss.to_string())),
            );
        }
        out
    }
}

/// The guardians' figures, read at scrape time.
pub struct Guardians<'a> {
    pub circuits: &'a [CircuitSnapshot],
    pub limiter: Option<&'a LimiterSnapshot>,
    pub memory: Option<&'a MemorySnapshot>,
    pub overload: &'a [(&'static str, LimitSnapshot)],
    /// Resident memory, from the monitor's last sample.
    pub rss_bytes: Option<u64>,
}

/// The job queues: their health from the table (`None`: PostgreSQL did not answer in time) and
/// this instance's runs.
pub struct JobFigures<'a> {
    pub queues: Option<&'a [QueueHealth]>,
    pub runs: &'a [QueueCounts],
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
