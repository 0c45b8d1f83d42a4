//! What handlers and the edge hold: actor handles, samples and settings, never a pool or a
//! connection.

use crate::domain::listing::CursorKey;
use crate::known_keys::KnownKeys;
use crate::probes::Sampled;
use crate::replicas::Reads;
use crate::settings::Settings;
use crate::store::jobs::Kind;
use crate::storefront_cache::StoreCache;
use ipnet::IpNet;
use rampart_actors::{
    BreakerBoard, ConcurrencyLimit, Db, DbGauge, DbProbe, Handle, Jobs, JobsBoard, LimitSnapshot,
    MemoryBoard, RateLimits, Tree, Wake,
};
use std::sync::Arc;

pub struct AppState {
    pub db: Handle<Db>,
    /// Catalog reads that missed the cache: a fresh replica, else the primary.
    pub reads: Reads,
    pub probe: Handle<DbProbe>,
    /// PostgreSQL, Redis and the job queues as last sampled (`health.refresh_ms`): what
    /// readiness, metrics and ops stats read, never asking the dependencies themselves.
    pub sampled: Sampled,
    pub gauge: DbGauge,
    pub cache: StoreCache,
    pub breakers: BreakerBoard,
    /// `None`: `rate_limit.enabled` is off.
    pub limits: Option<RateLimits>,
    pub concurrency: EdgeLimits,
    pub memory: MemoryBoard,
    /// The dispatcher (`None`: this instance does not run jobs) and its counters.
    pub jobs: Option<Handle<Jobs>>,
    pub jobs_board: JobsBoard,
    pub trusted_proxies: Vec<IpNet>,
    pub tree: Arc<Tree>,
    pub settings: Arc<Settings>,
    pub cursor_key: CursorKey,
    /// API keys recently found good (and the merchant) or bad, so neither costs a lookup again
    /// for a while.
    pub known_keys: KnownKeys,
}

impl AppState {
    /// Tells the dispatcher that a commit wrote jobs of these kinds (and, through it, the other
    /// instances), unless each queue's next claim is already scheduled. Never waits: a full
    /// mailbox drops the wake-up, and polling finds the jobs.
    pub fn wake_jobs(&self, kinds: &[&Kind]) {
        if let Some(jobs) = &self.jobs {
            let mut queues: Vec<String> = kinds
                .iter()
                .filter(|k| self.jobs_board.wake_needed(k.queue))
                .map(|k| k.queue.to_owned())
                .collect();
            queues.dedup();
            if queues.is_empty() {
                return;
            }
            let _ = jobs.addr().try_send(Wake {
                queues,
                broadcast: true,
            });
        }
    }
}

/// The edge's concurrency limits, one per lane, because one latency baseline for both would shed
/// the fast lane by the slow one's queue. Writes (a database transaction each) adapt to their
/// latency. Reads are mostly answered from memory: their latency measures the CPU, which shedding
/// them would not free, so their limit stays at `overload.initial_limit` (a read that misses the
/// cache meets the `Db` actor's bounded queue, which refuses at once when full).
#[derive(Clone)]
pub struct EdgeLimits {
    pub reads: ConcurrencyLimit,
    pub writes: ConcurrencyLimit,
}

impl EdgeLimits {
    pub fn snapshot(&self) -> [(&'static str, LimitSnapshot); 2] {
        [
            ("reads", self.reads.snapshot()),
            ("writes", self.writes.snapshot()),
        ]
    }
}
