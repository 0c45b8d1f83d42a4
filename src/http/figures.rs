//! The figures read at scrape time, in the Prometheus text format: what is read, the text it is
//! written to, and the resources' families (actors, the pool, the cache tiers); the guards' and
//! the job queues' families are `guard_figures.rs`.

use rampart_actors::db::PoolSnapshot;
use rampart_actors::{
    CacheSnapshot, CircuitSnapshot, LimitSnapshot, LimiterSnapshot, MemorySnapshot, QueueCounts,
    QueueHealth, SharedTierSnapshot, StatsSnapshot,
};
use std::fmt::Write;

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

/// Everything read at scrape time.
pub struct Figures<'a> {
    pub actors: &'a [StatsSnapshot],
    pub pool: Option<&'a PoolSnapshot>,
    pub cache: Option<&'a CacheSnapshot>,
    pub shared: Option<&'a SharedTierSnapshot>,
    pub guardians: Guardians<'a>,
    pub jobs: JobFigures<'a>,
}

/// The exposition being written, one family at a time.
pub struct Text<'a>(pub &'a mut String);

impl Text<'_> {
    /// A family's `HELP` and `TYPE` lines, then a line per row (labels, value).
    pub fn family(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        rows: &mut dyn Iterator<Item = (String, String)>,
    ) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(self.0, "{name}{labels} {value}");
        }
    }
}

/// The resources: every actor's mailbox and counters, the pool, the cache tiers.
pub fn resources(text: &mut Text<'_>, figures: &Figures<'_>) {
    let (actors, pool, cache, shared) =
        (figures.actors, figures.pool, figures.cache, figures.shared);
    let by_actor = |f: fn(&StatsSnapshot) -> String| {
        actors
            .iter()
            .map(move |a| (format!("{{actor=\"{}\"}}", a.name), f(a)))
    };
    text.family(
        "actor_mailbox_depth",
        "gauge",
        "Messages waiting in the actor's mailbox",
        &mut by_actor(|a| a.mailbox_depth.to_string()),
    );
    text.family(
        "actor_mailbox_capacity",
        "gauge",
        "Mailbox capacity",
        &mut by_actor(|a| a.mailbox_capacity.to_string()),
    );
    text.family(
        "actor_messages_handled_total",
        "counter",
        "Messages handled",
        &mut by_actor(|a| a.handled.to_string()),
    );
    text.family(
        "actor_messages_refused_total",
        "counter",
        "Messages refused because the mailbox was full",
        &mut by_actor(|a| a.refused.to_string()),
    );
    text.family(
        "actor_messages_expired_total",
        "counter",
        "Messages dropped because their caller had given up",
        &mut by_actor(|a| a.expired.to_string()),
    );
    text.family(
        "actor_restarts_total",
        "counter",
        "Restarts after a panic",
        &mut by_actor(|a| a.restarts.to_string()),
    );
    text.family(
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
            text.family(
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
    text.family(
        "cache_hits_total",
        "counter",
        "Lookups answered by the tier",
        &mut tiers(cache.map(|c| c.hits), shared.map(|r| r.hits)).into_iter(),
    );
    text.family(
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
            text.family(
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
            text.family(
                name,
                kind,
                help,
                &mut std::iter::once((redis.clone(), value.to_string())),
            );
        }
    }
}
