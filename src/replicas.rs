//! Read replicas (`database.replica_urls`): where a catalog read that missed the cache goes.
//!
//! Each replica is a `Db` actor of its own (its pool, its circuit `postgres_replica_<n>`). A
//! read goes to a replica only when that replica
//! - has its circuit closed or half-open,
//! - is fresh: it has replayed past a WAL position the primary reported at most
//!   `database.replica_max_lag_ms` ago, and
//! - is fresh for this merchant: it has replayed past a position the primary reported after the
//!   merchant's catalog last changed as seen here, by a write on this instance or another
//!   instance's invalidation broadcast (the cache's scope change time). So a client never reads
//!   its own write older than it wrote it, and every instance sees a write at the latest once it
//!   has heard of it.
//!
//! Otherwise, and when the replica fails the read, the read goes to the primary: a replica never
//! costs a client an error. Freshness is tracked by one task: every 100 ms it reads the primary's
//! WAL insert position, then each replica's replay position (each within 500 ms).
//!
//! Why the position is sampled instead of read after each write: a write would pay a second
//! round trip for it; a sample taken after a change holds a position at or past that change's
//! commit, which is all the comparison needs.

use crate::settings::Settings;
use rampart_actors::{
    current_deadline, CacheReader, Circuit, CircuitState, Conn, Db, DbCommand, DbError, Handle,
};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const TRACK_EVERY: Duration = Duration::from_millis(100);
/// A read tried on a replica gets at most this, and at most half the request's time left: a
/// replica that hangs (frozen, partitioned) leaves the primary time to answer.
const REPLICA_ATTEMPT: Duration = Duration::from_secs(1);
const TRACK_WITHIN: Duration = Duration::from_millis(500);

pub struct Replica {
    pub name: String,
    pub db: Handle<Db>,
    circuit: Circuit,
    /// Nanoseconds after [`Reads::epoch`] when the primary reported a position this replica has
    /// replayed past (0: never).
    fresh_as_of: AtomicU64,
    reads: AtomicU64,
    not_a_standby: AtomicBool,
}

impl Replica {
    pub fn new(name: String, db: Handle<Db>, circuit: Circuit) -> Self {
        Self {
            name,
            db,
            circuit,
            fresh_as_of: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            not_a_standby: AtomicBool::new(false),
        }
    }
}

/// Picks where a catalog read runs. Cheap to clone; every HTTP worker holds one.
#[derive(Clone)]
pub struct Reads {
    primary: Handle<Db>,
    replicas: Arc<[Replica]>,
    changes: CacheReader,
    max_lag: Duration,
    epoch: Instant,
    next: Arc<AtomicUsize>,
    fallbacks: Arc<AtomicU64>,
}

#[derive(Debug, Serialize)]
pub struct ReplicaSnapshot {
    pub name: String,
    pub circuit: CircuitState,
    /// How far behind the primary it is known to be, at most (`None`: never caught up).
    pub lag_ms: Option<u64>,
    /// Reads it answered.
    pub reads: u64,
}

impl Reads {
    pub fn new(
        primary: Handle<Db>,
        replicas: Vec<Replica>,
        changes: CacheReader,
        settings: &Settings,
    ) -> Self {
        Self {
            primary,
            replicas: replicas.into(),
            changes,
            max_lag: Settings::ms(settings.database.replica_max_lag_ms),
            epoch: Instant::now(),
            next: Arc::new(AtomicUsize::new(0)),
            fallbacks: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Runs a read of `merchant_id`'s catalog on a replica fresh enough for it, else (or when the
    /// replica fails it) on the primary.
    pub async fn run<C>(&self, merchant_id: Uuid, command: C) -> Result<C::Output, DbError>
    where
        C: DbCommand + Clone,
    {
        if let Some(replica) = self.pick(merchant_id) {
            let budget = current_deadline().map_or(REPLICA_ATTEMPT, |at| {
                (at.saturating_duration_since(tokio::time::Instant::now()) / 2).min(REPLICA_ATTEMPT)
            });
            match replica.db.run_within(command.clone(), budget).await {
                Ok(output) => {
                    replica.reads.fetch_add(1, Relaxed);
                    return Ok(output);
                }
                Err(e) => {
                    self.fallbacks.fetch_add(1, Relaxed);
                    tracing::debug!(replica = %replica.name, error = %e, "replica read failed; reading from the primary");
                }
            }
        }
        self.primary.run(command).await
    }

    fn pick(&self, merchant_id: Uuid) -> Option<&Replica> {
        if self.replicas.is_empty() {
            return None;
        }
        let now = Instant::now();
        let changed = self.changes.changed_at(&crate::catalog::scope(merchant_id));
        let start = self.next.fetch_add(1, Relaxed);
        (0..self.replicas.len())
            .map(|i| &self.replicas[(start + i) % self.replicas.len()])
            .find(|r| {
                let Some(fresh) = self.fresh_as_of(r) else {
                    return false;
                };
                r.circuit.state() != CircuitState::Open
                    && now.saturating_duration_since(fresh) <= self.max_lag
                    && changed.is_none_or(|at| fresh > at)
            })
    }

    fn fresh_as_of(&self, replica: &Replica) -> Option<Instant> {
        match replica.fresh_as_of.load(Relaxed) {
            0 => None,
            nanos => Some(self.epoch + Duration::from_nanos(nanos)),
        }
    }

    /// Reads that went to the primary because the replica chosen failed them.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Relaxed)
    }

    pub fn snapshot(&self) -> Vec<ReplicaSnapshot> {
        let now = Instant::now();
        self.replicas
            .iter()
            .map(|r| ReplicaSnapshot {
                name: r.name.clone(),
                circuit: r.circuit.state(),
                lag_ms: self
                    .fresh_as_of(r)
                    .map(|at| now.saturating_duration_since(at).as_millis() as u64),
                reads: r.reads.load(Relaxed),
            })
            .collect()
    }

    /// Keeps every replica's freshness current, for as long as the returned future runs.
    pub async fn track(self) {
        if self.replicas.is_empty() {
            return;
        }
        // (when asked, the primary's insert position): enough to cover the lag allowed.
        let keep = (self.max_lag.as_millis() / TRACK_EVERY.as_millis()) as usize + 4;
        let mut samples: VecDeque<(Instant, i64)> = VecDeque::with_capacity(keep);
        let mut ticks = tokio::time::interval(TRACK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let asked = Instant::now();
            match self.primary.run_within(INSERTED, TRACK_WITHIN).await {
                Ok(Some(lsn)) => {
                    if samples.len() == keep {
                        samples.pop_front();
                    }
                    samples.push_back((asked, lsn));
                }
                other => {
                    tracing::debug!(answer = ?other, "primary WAL position unknown");
                    continue;
                }
            }
            for replica in self.replicas.iter() {
                let replayed = match replica.db.run_within(REPLAYED, TRACK_WITHIN).await {
                    Ok(Some(lsn)) => lsn,
                    Ok(None) => {
                        // Said once, not on every tick.
                        if !replica.not_a_standby.swap(true, Relaxed) {
                            tracing::warn!(replica = %replica.name, "not a standby: never read from");
                        }
                        continue;
                    }
                    Err(_) => continue,
                };
                // The latest sample it has replayed past: it is at least as fresh as the primary
                // was when that sample was asked for.
                if let Some((at, _)) = samples.iter().rev().find(|(_, lsn)| *lsn <= replayed) {
                    let nanos = at.saturating_duration_since(self.epoch).as_nanos() as u64;
                    replica.fresh_as_of.fetch_max(nanos.max(1), Relaxed);
                }
            }
        }
    }
}

/// A WAL position as a number (`None`: the server has none of that kind).
#[derive(Clone, Copy)]
struct Position(&'static str);

/// The primary's insert position: every commit acknowledged before it was asked lies at or
/// before it.
const INSERTED: Position = Position("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint");
/// How far a standby has replayed (`None` on a server that is not a standby).
const REPLAYED: Position = Position("SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint");

impl DbCommand for Position {
    type Output = Option<i64>;

    async fn run(self, conn: &mut Conn) -> Result<Option<i64>, DbError> {
        Ok(conn.query_one(self.0, &[]).await?.get(0))
    }
}
