//! Ops endpoints: liveness, readiness, metrics. Never rate limited or shed, and never waiting in
//! the lanes requests use: PostgreSQL, Redis and the job queues are read from the background
//! sample ([`crate::probes`]), so a probe or a scrape sends no message and no command; the rest
//! is what the actors publish (circuits, memory, mailboxes, the pool's gauge). They are
//! unauthenticated, so they show states and short reasons, never driver messages, panic text or
//! a merchant's webhook host (per-host circuits are in `/metrics` and `/api/v1/ops/stats`).

use crate::http::figures::{Figures, Guardians, JobFigures};
use crate::http::metrics::{resident_memory, Metrics};
use crate::probes;
use crate::state::AppState;
use actix_web::http::header::ContentType;
use actix_web::{web, HttpResponse};
use rampart_actors::{ActorState, CircuitState, MemoryLevel, MemorySnapshot, QueueHealth};
use serde_json::{json, Map, Value};
use std::time::Instant;

/// 200 while the process serves; touches no dependency.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// 200 `ready` or `degraded` while PostgreSQL answered the latest sample and every actor runs;
/// else 503 `unready`, also when the latest sample is stale ([`probes::stale_after`]: the sampler
/// died or stalls). Sends nothing to any actor or dependency.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let sample = state.sampled.get();
    let mut checks = Map::new();
    let mut unready = false;

    let stale = sample.is_stale_at(Instant::now(), probes::stale_after(&state.settings));
    checks.insert(
        "postgres".into(),
        match sample.postgres {
            _ if stale => {
                unready = true;
                json!({"status": "down", "reason": "stale sample: the background check has not completed in time", "checked_ms_ago": sample.age_ms()})
            }
            Ok(rtt) => {
                let ms = rtt.as_secs_f64() * 1000.0;
                json!({"status": "up", "latency_ms": (ms * 10.0).round() / 10.0, "checked_ms_ago": sample.age_ms()})
            }
            Err(reason) => {
                unready = true;
                json!({"status": "down", "reason": reason, "checked_ms_ago": sample.age_ms()})
            }
        },
    );
    // Redis down is "degraded": the in-process tier and PostgreSQL still serve.
    let mut degraded = false;
    checks.insert(
        "redis".into(),
        match (&state.cache.shared, sample.redis) {
            (None, _) | (_, None) => json!({"status": "disabled"}),
            (Some(shared), Some(answered)) => {
                if answered {
                    json!({"status": "up"})
                } else {
                    degraded = true;
                    let breaker = if shared.snapshot().breaker_open { "open" } else { "closed" };
                    json!({"status": "down", "reason": "no answer within the command timeout", "breaker": breaker})
                }
            }
        },
    );
    // An open circuit other than PostgreSQL's (whose check above decides readiness) degrades,
    // but a webhook host's: one merchant's receiver being down says nothing of this instance,
    // and its name is that merchant's business. Those are counted here, named in the metrics.
    let (mut webhooks, mut webhooks_open) = (0, 0);
    for circuit in state.breakers.snapshot() {
        let closed = circuit.state == CircuitState::Closed;
        if circuit.name.starts_with("webhook:") {
            webhooks += 1;
            webhooks_open += usize::from(!closed);
            continue;
        }
        degraded |= !closed && circuit.name != "postgres";
        checks.insert(
            format!("circuit.{}", circuit.name),
            json!({
                "status": if closed { "up" } else { "down" },
                "state": circuit.state,
                "open_for_ms": circuit.open_for_ms,
            }),
        );
    }
    // Memory critical sheds all but ops: still serving them, so "degraded".
    checks.insert(
        "webhooks".into(),
        json!({"status": "up", "circuits": webhooks, "circuits_open": webhooks_open}),
    );
    if let Some(memory) = state.memory.snapshot() {
        let critical = memory.level == MemoryLevel::Critical;
        degraded |= critical;
        checks.insert(
            "memory".into(),
            json!({
                "status": if critical { "down" } else { "up" },
                "level": memory.level,
                "rss_bytes": memory.rss_bytes,
                "trend_bytes_per_sec": memory.trend_bytes_per_sec.round(),
                "leak_suspected": memory.leak_suspected,
            }),
        );
    }
    if let Some(limits) = &state.limits {
        let l = limits.snapshot();
        checks.insert(
            "rate_limit".into(),
            json!({"status": "up", "mode": l.mode, "fallbacks": l.fallbacks}),
        );
    }
    for (lane, o) in state.concurrency.snapshot() {
        checks.insert(
            format!("overload.{lane}"),
            json!({"status": "up", "limit": o.limit, "inflight": o.inflight, "shed": o.shed}),
        );
    }
    // Dead jobs need a person (see the runbook), but the instance still serves: not a readiness
    // matter, shown here and in /metrics.
    checks.insert(
        "jobs".into(),
        json!({
            "status": if state.jobs.is_some() { "up" } else { "disabled" },
            "listening": state.jobs_board.listening(),
            "queues": sample.queues,
        }),
    );
    for actor in state.tree.snapshot() {
        let failed = actor.state == ActorState::Failed || actor.state == ActorState::Stopped;
        unready |= failed;
        checks.insert(
            format!("actor.{}", actor.name),
            json!({
                "status": if failed { "down" } else { "up" },
                "state": actor.state,
                "mailbox_depth": actor.mailbox_depth,
                "mailbox_capacity": actor.mailbox_capacity,
                "restarts": actor.restarts,
            }),
        );
    }
    let status = match (unready, degraded) {
        (true, _) => "unready",
        (false, true) => "degraded",
        (false, false) => "ready",
    };
    let body = json!({"status": status, "checks": Value::Object(checks)});
    if unready {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}

pub async fn metrics(state: web::Data<AppState>, metrics: web::Data<Metrics>) -> HttpResponse {
    let pool = state.gauge.snapshot();
    let cache = state.cache.reader.snapshot();
    let shared = state.cache.shared.as_ref().map(|s| s.snapshot());
    let circuits = state.breakers.snapshot();
    let limiter = state.limits.as_ref().map(|l| l.snapshot());
    let memory = state.memory.snapshot();
    let guardians = Guardians {
        circuits: &circuits,
        limiter: limiter.as_ref(),
        memory: memory.as_ref(),
        overload: &state.concurrency.snapshot(),
        rss_bytes: rss(memory.as_ref()),
    };
    let sample = state.sampled.get();
    let runs = state.jobs_board.snapshot();
    let jobs = JobFigures {
        queues: sample.queues.as_deref(),
        runs: &runs,
    };
    let actors = state.tree.snapshot();
    let text = metrics.render(&Figures {
        actors: &actors,
        pool: Some(&pool),
        cache: Some(&cache),
        shared: shared.as_ref(),
        guardians,
        jobs,
    });
    let text = text + &replica_metrics(&state.reads);
    HttpResponse::Ok()
        .insert_header(ContentType(prometheus_text()))
        .body(text)
}

/// The read replicas' figures (none without `database.replica_urls`).
fn replica_metrics(reads: &crate::replicas::Reads) -> String {
    use std::fmt::Write;
    let replicas = reads.snapshot();
    if replicas.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "# HELP db_replica_reads_total Catalog reads a replica answered\n# TYPE db_replica_reads_total counter\n",
    );
    for r in &replicas {
        let _ = writeln!(
            out,
            "db_replica_reads_total{{replica=\"{}\"}} {}",
            r.name, r.reads
        );
    }
    out.push_str("# HELP db_replica_lag_ms How far behind the primary a replica is known to be, at most (-1: never caught up)\n# TYPE db_replica_lag_ms gauge\n");
    for r in &replicas {
        let lag = r.lag_ms.map_or(-1, |ms| ms as i64);
        let _ = writeln!(out, "db_replica_lag_ms{{replica=\"{}\"}} {lag}", r.name);
    }
    let _ = writeln!(
        out,
        "# HELP db_replica_fallbacks_total Replica reads that failed and went to the primary\n# TYPE db_replica_fallbacks_total counter\ndb_replica_fallbacks_total {}",
        reads.fallbacks()
    );
    out
}

/// The queues' health across every instance, as last sampled (`None`: PostgreSQL did not
/// answer in time; its own check says so).
pub fn queue_health(state: &AppState) -> Option<Vec<QueueHealth>> {
    state.sampled.get().queues.clone()
}

/// Resident memory as the memory monitor last sampled it (at most `memory.check_interval_ms`
/// old), read anew only before its first sample.
pub fn rss(sampled: Option<&MemorySnapshot>) -> Option<u64> {
    sampled
        .map(|m| m.rss_bytes)
        .filter(|bytes| *bytes > 0)
        .or_else(resident_memory)
}

fn prometheus_text() -> actix_web::mime::Mime {
    "text/plain; version=0.0.4; charset=utf-8"
        .parse()
        .unwrap_or(actix_web::mime::TEXT_PLAIN_UTF_8)
}
