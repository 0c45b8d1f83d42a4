//! The dispatcher's counters per queue ([`JobsBoard`]), shared with ops and read without a
//! message: runs started, succeeded, retried, deferred, dead, leases lost, and whether a queue's
//! next claim is already scheduled.

use super::outcome::Outcome;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;

/// Counters per queue, read without a message.
#[derive(Debug, Default)]
pub struct QueueCounters {
    pub started: AtomicU64,
    pub succeeded: AtomicU64,
    pub retried: AtomicU64,
    pub deferred: AtomicU64,
    pub dead: AtomicU64,
    /// Runs that finished after their lease had run out and the job had been put back.
    pub lease_lost: AtomicU64,
    pub running: AtomicU64,
    /// A claim of the queue is scheduled (while busy, at its cadence): a commit's wake-up would
    /// change nothing, so the request path sends none ([`JobsBoard::wake_needed`]).
    pub(super) armed: AtomicBool,
}

impl QueueCounters {
    /// Counts a recorded outcome.
    pub(super) fn count(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Succeeded => &self.succeeded,
            Outcome::Later { spend: true, .. } => &self.retried,
            Outcome::Later { spend: false, .. } => &self.deferred,
            Outcome::Dead { .. } => &self.dead,
        };
        counter.fetch_add(1, Relaxed);
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QueueCounts {
    pub queue: String,
    pub concurrency: usize,
    pub running_here: u64,
    pub started: u64,
    pub succeeded: u64,
    pub retried: u64,
    pub deferred: u64,
    pub dead: u64,
    pub lease_lost: u64,
}

/// What the dispatcher shows ops, shared with it.
#[derive(Clone, Default)]
pub struct JobsBoard {
    pub(super) queues: Arc<BTreeMap<String, (usize, Arc<QueueCounters>)>>,
    pub(super) notifications: Arc<AtomicU64>,
    pub(super) listening: Arc<AtomicBool>,
    /// Outcomes finished here and not written yet.
    pub(super) unrecorded: Arc<AtomicU64>,
    /// Claims of runs apart under way (a stop waits for them: their jobs are handed back).
    pub(super) claims: Arc<AtomicU64>,
}

impl JobsBoard {
    pub fn new(queues: &BTreeMap<String, usize>) -> Self {
        Self {
            queues: Arc::new(
                queues
                    .iter()
                    .map(|(q, n)| (q.clone(), (*n, Arc::new(QueueCounters::default()))))
                    .collect(),
            ),
            ..Self::default()
        }
    }

    pub(super) fn counters(&self, queue: &str) -> Option<&Arc<QueueCounters>> {
        self.queues.get(queue).map(|(_, c)| c)
    }

    pub fn snapshot(&self) -> Vec<QueueCounts> {
        self.queues
            .iter()
            .map(|(queue, (concurrency, c))| QueueCounts {
                queue: queue.clone(),
                concurrency: *concurrency,
                running_here: c.running.load(Relaxed),
                started: c.started.load(Relaxed),
                succeeded: c.succeeded.load(Relaxed),
                retried: c.retried.load(Relaxed),
                deferred: c.deferred.load(Relaxed),
                dead: c.dead.load(Relaxed),
                lease_lost: c.lease_lost.load(Relaxed),
            })
            .collect()
    }

    /// Whether a commit that wrote jobs of `queue` should wake the dispatcher: not when the
    /// queue is not dispatched here, nor while a claim of it is scheduled (it is disarmed before
    /// that claim reads the queue, so the claim sees every commit that found it armed). While
    /// requests are busy this spares the dispatcher's thread a wake-up per checkout.
    pub fn wake_needed(&self, queue: &str) -> bool {
        self.counters(queue).is_some_and(|c| !c.armed.load(SeqCst))
    }

    /// Notifications received from other instances.
    pub fn notifications(&self) -> u64 {
        self.notifications.load(Relaxed)
    }

    /// Whether the `LISTEN` connection is up.
    pub fn listening(&self) -> bool {
        self.listening.load(Relaxed)
    }
}
