//! Per-actor counters, shared between the actor, its handle and whoever reports on it.
//! Atomics only on the hot path; the last failure text sits behind a mutex because it is
//! written on the rare failure and read on a scrape.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorState {
    Running,
    Restarting,
    /// Restarted more often than its intensity allows; it no longer takes messages.
    Failed,
    Stopped,
}

impl ActorState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Running,
            1 => Self::Restarting,
            2 => Self::Failed,
            _ => Self::Stopped,
        }
    }
    fn as_u8(self) -> u8 {
        self as u8
    }
}

#[derive(Debug)]
pub struct ActorStats {
    name: &'static str,
    capacity: usize,
    admitted: AtomicU64,
    dequeued: AtomicU64,
    handled: AtomicU64,
    refused: AtomicU64,
    expired: AtomicU64,
    restarts: AtomicU64,
    state: AtomicU8,
    last_failure: Mutex<Option<String>>,
}

/// A point-in-time copy of [`ActorStats`], for metrics, readiness and people.
#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    pub name: &'static str,
    pub state: ActorState,
    pub mailbox_capacity: usize,
    pub mailbox_depth: u64,
    pub handled: u64,
    pub refused: u64,
    pub expired: u64,
    pub restarts: u64,
    pub last_failure: Option<String>,
}

impl ActorStats {
    pub fn new(name: &'static str, capacity: usize) -> Self {
        Self {
            name,
            capacity,
            admitted: AtomicU64::new(0),
            dequeued: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            state: AtomicU8::new(ActorState::Running.as_u8()),
            last_failure: Mutex::new(None),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
    pub fn state(&self) -> ActorState {
        ActorState::from_u8(self.state.load(Relaxed))
    }
    pub(crate) fn set_state(&self, state: ActorState) {
        self.state.store(state.as_u8(), Relaxed);
    }
    pub(crate) fn admitted(&self) {
        self.admitted.fetch_add(1, Relaxed);
    }
    pub(crate) fn dequeued(&self) {
        self.dequeued.fetch_add(1, Relaxed);
    }
    pub(crate) fn handled(&self) {
        self.handled.fetch_add(1, Relaxed);
    }
    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Relaxed);
    }
    pub(crate) fn expired(&self) {
        self.expired.fetch_add(1, Relaxed);
    }
    pub(crate) fn restarted(&self) {
        self.restarts.fetch_add(1, Relaxed);
    }
    pub(crate) fn record_failure(&self, what: String) {
        if let Ok(mut last) = self.last_failure.lock() {
            *last = Some(what);
        }
    }

    /// Messages admitted to the mailbox and not yet taken out by the actor.
    pub fn mailbox_depth(&self) -> u64 {
        let admitted = self.admitted.load(Relaxed);
        admitted.saturating_sub(self.dequeued.load(Relaxed))
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            name: self.name,
            state: self.state(),
            mailbox_capacity: self.capacity,
            mailbox_depth: self.mailbox_depth(),
            handled: self.handled.load(Relaxed),
            refused: self.refused.load(Relaxed),
            expired: self.expired.load(Relaxed),
            restarts: self.restarts.load(Relaxed),
            last_failure: self.last_failure.lock().ok().and_then(|l| l.clone()),
        }
    }
}
