//! The guards' and the job queues' figures in the Prometheus text format: circuits, rate limits,
//! the edge's lanes, memory and CPU, the queues and this instance's runs.

use crate::http::figures::{Guardians, JobFigures, Text};
use rampart_actors::{CircuitSnapshot, LimitSnapshot, MemoryLevel, QueueHealth};

/// Circuits, rate limits, the edge's lanes, memory.
pub fn guardians(text: &mut Text<'_>, guardians: &Guardians<'_>) {
    let circuits = guardians.circuits;
    let by_circuit = |f: fn(&CircuitSnapshot) -> u64| {
        circuits
            .iter()
            .map(move |c| (format!("{{circuit=\"{}\"}}", c.name), f(c).to_string()))
    };
    text.family(
        "circuit_state",
        "gauge",
        "0 closed, 1 half-open, 2 open",
        &mut by_circuit(|c| u64::from(c.state.level())),
    );
    text.family(
        "circuit_refused_total",
        "counter",
        "Calls refused while the circuit was open",
        &mut by_circuit(|c| c.refused),
    );
    text.family(
        "circuit_failures_total",
        "counter",
        "Calls that failed",
        &mut by_circuit(|c| c.failures),
    );
    text.family(
        "circuit_opened_total",
        "counter",
        "Times the circuit opened",
        &mut by_circuit(|c| c.times_opened),
    );
    if let Some(limiter) = guardians.limiter {
        text.family(
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
        text.family(
            "rate_limit_keys",
            "gauge",
            "Keys held in process by class",
            &mut limiter
                .classes
                .iter()
                .map(|c| (format!("{{class=\"{}\"}}", c.name), c.keys.to_string())),
        );
        text.family(
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
    text.family(
        "overload_limit",
        "gauge",
        "The edge's concurrency limit now, by lane",
        &mut by_lane(|o| o.limit as u64),
    );
    text.family(
        "overload_inflight",
        "gauge",
        "Requests holding a place under the limit, by lane",
        &mut by_lane(|o| o.inflight as u64),
    );
    text.family(
        "overload_queued",
        "gauge",
        "Requests waiting for a place under the limit, by lane",
        &mut by_lane(|o| o.queued as u64),
    );
    text.family(
        "overload_waited_total",
        "counter",
        "Requests admitted after waiting for a place, by lane",
        &mut by_lane(|o| o.waited),
    );
    text.family(
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
            text.family(
                name,
                "gauge",
                help,
                &mut std::iter::once((String::new(), value.to_string())),
            );
        }
        text.family(
            "arbiter_lag_seconds",
            "gauge",
            "How late the latest timer fired on each watched arbiter",
            &mut m
                .arbiter_lag_ms
                .iter()
                .map(|(name, ms)| (format!("{{arbiter=\"{name}\"}}"), (ms / 1000.0).to_string())),
        );
    }
}

/// The job queues (all instances) and this instance's runs.
pub fn jobs(text: &mut Text<'_>, jobs: &JobFigures<'_>) {
    if let Some(queues) = jobs.queues {
        let by_queue = |f: fn(&QueueHealth) -> String| {
            queues
                .iter()
                .map(move |q| (format!("{{queue=\"{}\"}}", q.queue), f(q)))
        };
        text.family(
            "jobs_queue_depth",
            "gauge",
            "Jobs waiting to run, due or scheduled for a retry (all instances)",
            &mut by_queue(|q| q.depth.to_string()),
        );
        text.family(
            "jobs_running",
            "gauge",
            "Jobs running now (all instances)",
            &mut by_queue(|q| q.running.to_string()),
        );
        text.family(
            "jobs_failed",
            "gauge",
            "Jobs whose last attempt failed, awaiting a retry",
            &mut by_queue(|q| q.failed.to_string()),
        );
        text.family(
            "jobs_dead",
            "gauge",
            "Jobs with no attempts left",
            &mut by_queue(|q| q.dead.to_string()),
        );
        text.family(
            "jobs_oldest_due_seconds",
            "gauge",
            "How long the oldest due job has waited",
            &mut by_queue(|q| q.oldest_due_secs.to_string()),
        );
    }
    text.family(
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
    text.family(
        "jobs_started_total",
        "counter",
        "Job runs started on this instance by queue",
        &mut jobs
            .runs
            .iter()
            .map(|q| (format!("{{queue=\"{}\"}}", q.queue), q.started.to_string())),
    );
}

/// The process's resident memory.
pub fn process(text: &mut Text<'_>, guardians: &Guardians<'_>) {
    if let Some(rss) = guardians.rss_bytes {
        text.family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory",
            &mut std::iter::once((String::new(), rss.to_string())),
        );
    }
}
