//! The edge's concurrency limit and the short queue in front of it: work that finds the limit
//! full waits its turn (first come, first served) instead of being refused, and is refused at
//! once only when its expected wait would pass its deadline. So clients that wait for each
//! answer (a closed loop of any size up to `max`) are served at the dependency's pace, and a
//! refusal means the work could not have been done in time.
//!
//! The limit adapts in the manner of Netflix's concurrency-limits `Gradient2`: every [`WINDOW`]
//! samples the window's mean latency (short) is compared with a long-term average (long, about
//! 600 samples). The gradient `TOLERANCE × long / short`, kept within 0.5..=1, scales the limit,
//! plus the square root of the limit as headroom; the result is smoothed. A sudden queue
//! (short well above long) shrinks the limit; a steady one (a closed loop of many clients) is
//! tolerated, because the long-term average follows it, so the limit never starves the database
//! of the concurrency it serves best with. A limit far above the work in flight does not grow.
//! When the short latency falls well below the long (the queue drained), the long average decays
//! quickly so the limit recovers. With `adaptive` off the limit stays at `initial`.
//!
//! Expected wait: the waiters ahead (and this one) × the mean latency ÷ the work in flight
//! (Little's law: the pace at which places free up). Against the deadline minus one mean
//! latency (the work itself must fit). A waiter whose place does not come by then is refused.
//!
//! Criticality decides the order: [`Criticality::Sheddable`] work holds at most three quarters
//! of the limit, [`Criticality::Important`] work (a checkout) the whole of it and is handed a
//! freed place before any sheddable waiter; [`Criticality::Critical`] work (health, metrics)
//! never waits and is never refused. An external pressure flag (the memory monitor's critical
//! state) refuses everything but critical work at once. Admission with room is three atomic
//! operations; a refusal by expected wait is a few more.

use gradient::Estimate;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

mod gradient;

pub use gradient::{TOLERANCE, WINDOW};

#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    pub adaptive: bool,
    pub initial: usize,
    pub min: usize,
    pub max: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            adaptive: true,
            initial: 256,
            min: 8,
            max: 4096,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Criticality {
    /// Never waits, never refused (ops endpoints).
    Critical,
    /// The whole limit, first in line for a freed place (checkout).
    Important,
    /// Three quarters of the limit (browsing, merchant reads and writes).
    Sheddable,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    tx: oneshot::Sender<Handoff>,
}

/// The waiters, important ones first; each deque in arrival order.
#[derive(Debug, Default)]
struct Line {
    important: VecDeque<Waiter>,
    sheddable: VecDeque<Waiter>,
    next_id: u64,
}

#[derive(Debug)]
struct Shared {
    settings: LimitSettings,
    estimate: Mutex<Estimate>,
    limit: AtomicUsize,
    inflight: AtomicUsize,
    pressure: AtomicBool,
    admitted: AtomicU64,
    shed: AtomicU64,
    /// Admitted after waiting in line.
    waited: AtomicU64,
    /// Waiters in `line`, readable without its lock (release checks it on every permit).
    queued: AtomicUsize,
    line: Mutex<Line>,
    /// The last window's mean latency, in nanoseconds: the pace of the expected wait.
    recent_rtt: AtomicU64,
}

/// Shared by every HTTP worker.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit {
    shared: Arc<Shared>,
}

/// One admitted piece of work; report its latency with [`Permit::finish`] (dropping it without
/// reporting only frees its place, handing it to the first waiter).
#[derive(Debug)]
pub struct Permit {
    shared: Arc<Shared>,
    critical: bool,
}

/// A place handed to a waiter. Dropped unopened (the waiter gave up as it was handed over), it
/// passes the place on, so no place is ever lost between a releaser and a leaving waiter.
#[derive(Debug)]
struct Handoff {
    shared: Arc<Shared>,
    armed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitSnapshot {
    pub adaptive: bool,
    pub limit: usize,
    pub inflight: usize,
    /// Waiting for a place now.
    pub queued: usize,
    pub admitted: u64,
    /// Admitted after waiting.
    pub waited: u64,
    pub shed: u64,
    /// Everything but critical work is shed (memory pressure).
    pub pressure: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state stays consistent across a panic (plain counters and queues).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ConcurrencyLimit {
    pub fn new(settings: LimitSettings) -> Self {
        let initial = settings
            .initial
            .clamp(settings.min.max(1), settings.max.max(1));
        Self {
            shared: Arc::new(Shared {
                settings,
                estimate: Mutex::new(Estimate::new(initial as f64)),
                limit: AtomicUsize::new(initial),
                inflight: AtomicUsize::new(0),
                pressure: AtomicBool::new(false),
                admitted: AtomicU64::new(0),
                shed: AtomicU64::new(0),
                waited: AtomicU64::new(0),
                queued: AtomicUsize::new(0),
                line: Mutex::new(Line::default()),
                recent_rtt: AtomicU64::new(0),
            }),
        }
    }

    /// Admits work of this criticality now if there is room, else refuses it at once (no
    /// waiting: for callers without a deadline).
    pub fn try_acquire(&self, criticality: Criticality) -> Option<Permit> {
        let s = &self.shared;
        match s.enter_now(criticality) {
            Some(permit) => Some(permit),
            None => {
                s.shed.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// Admits work of this criticality: at once while there is room, else after waiting its
    /// turn, unless the expected wait plus the work would pass `deadline` (then refused at
    /// once) or its turn does not come in time (refused then). Without a deadline it never
    /// waits. Dropping the future gives up the place in line.
    pub async fn acquire(
        &self,
        criticality: Criticality,
        deadline: Option<Instant>,
    ) -> Option<Permit> {
        let s = &self.shared;
        if let Some(permit) = s.enter_now(criticality) {
            return Some(permit);
        }
        let important = criticality == Criticality::Important;
        let refused = || {
            s.shed.fetch_add(1, Relaxed);
            None
        };
        let Some(deadline) = deadline.filter(|_| !s.pressure.load(Relaxed)) else {
            return refused();
        };
        let (id, rx) = match s.line_up(important, deadline) {
            Ok(Some(permit)) => return Some(permit),
            Ok(None) => return refused(),
            Err(waiting) => waiting,
        };
        let mut place = Place {
            shared: s,
            id,
            important,
            served: false,
        };
        let latest = deadline.checked_sub(s.recent_rtt()).unwrap_or(deadline);
        match tokio::time::timeout_at(latest, rx).await {
            Ok(Ok(handoff)) => {
                place.served = true;
                s.waited.fetch_add(1, Relaxed);
                Some(handoff.open())
            }
            _ => {
                drop(place);
                refused()
            }
        }
    }

    /// Sheds everything but critical work while `on` (the memory monitor's critical state),
    /// those waiting in line included: they are refused at once rather than at their deadline.
    pub fn set_pressure(&self, on: bool) {
        let s = &self.shared;
        s.pressure.store(on, Relaxed);
        if on {
            let mut line = lock(&s.line);
            let refused = line.important.len() + line.sheddable.len();
            // Dropping a waiter's sender ends its wait with a refusal.
            line.important.clear();
            line.sheddable.clear();
            s.queued.fetch_sub(refused, SeqCst);
        }
    }

    pub fn limit(&self) -> usize {
        self.shared.limit.load(Relaxed)
    }

    pub fn snapshot(&self) -> LimitSnapshot {
        let s = &self.shared;
        LimitSnapshot {
            adaptive: s.settings.adaptive,
            limit: s.limit.load(Relaxed),
            inflight: s.inflight.load(Relaxed),
            queued: s.queued.load(Relaxed),
            admitted: s.admitted.load(Relaxed),
            waited: s.waited.load(Relaxed),
            shed: s.shed.load(Relaxed),
            pressure: s.pressure.load(Relaxed),
        }
    }

    /// Feeds one latency sample, with `inflight` pieces of work running when it ended.
    pub fn sample(&self, rtt: Duration, inflight: usize) {
        self.shared.sample(rtt, inflight);
    }
}

/// A waiter's place in line; leaving without being served takes it out of the line.
struct Place<'a> {
    shared: &'a Arc<Shared>,
    id: u64,
    important: bool,
    served: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        let mut line = lock(&self.shared.line);
        let deque = if self.important {
            &mut line.important
        } else {
            &mut line.sheddable
        };
        if let Some(at) = deque.iter().position(|w| w.id == self.id) {
            deque.remove(at);
            self.shared.queued.fetch_sub(1, SeqCst);
        }
    }
}

impl Shared {
    fn room(&self, important: bool) -> usize {
        let limit = self.limit.load(Relaxed);
        if important {
            limit
        } else {
            (limit - limit / 4).max(1)
        }
    }

    /// Takes a place if one is free within `room`.
    fn try_enter(&self, room: usize) -> bool {
        if self.inflight.fetch_add(1, SeqCst) < room {
            return true;
        }
        self.inflight.fetch_sub(1, SeqCst);
        false
    }

    fn recent_rtt(&self) -> Duration {
        Duration::from_nanos(self.recent_rtt.load(Relaxed))
    }

    fn permit(self: &Arc<Self>) -> Permit {
        self.admitted.fetch_add(1, Relaxed);
        Permit {
            shared: Arc::clone(self),
            critical: false,
        }
    }

    /// The fast path: critical work, or room with nobody waiting.
    fn enter_now(self: &Arc<Self>, criticality: Criticality) -> Option<Permit> {
        if criticality == Criticality::Critical {
            return Some(Permit {
                shared: Arc::clone(self),
                critical: true,
            });
        }
        if self.pressure.load(Relaxed) || self.queued.load(SeqCst) > 0 {
            return None;
        }
        let room = self.room(criticality == Criticality::Important);
        self.try_enter(room).then(|| self.permit())
    }

    /// Under the line's lock: serves the waiters places have freed for, then this caller: a
    /// place now (`Ok(Some)`), a refusal because its expected wait passes its deadline
    /// (`Ok(None)`), or a place in line (`Err`).
    #[allow(clippy::type_complexity)]
    fn line_up(
        self: &Arc<Self>,
        important: bool,
        deadline: Instant,
    ) -> Result<Option<Permit>, (u64, oneshot::Receiver<Handoff>)> {
        let mut line = lock(&self.line);
        self.serve(&mut line);
        // Counted before the room is tried: a releaser that misses this count has freed its
        // place before the try below, which then takes it (no waiter sleeps beside a free place).
        self.queued.fetch_add(1, SeqCst);
        if self.try_enter(self.room(important)) {
            self.queued.fetch_sub(1, SeqCst);
            return Ok(Some(self.permit()));
        }
        let ahead = if important {
            line.important.len()
        } else {
            line.important.len() + line.sheddable.len()
        };
        let rtt = self.recent_rtt();
        let pace = self.inflight.load(Relaxed).max(1) as u32;
        let wait = rtt.saturating_mul(ahead as u32 + 1) / pace;
        if Instant::now() + wait + rtt > deadline {
            self.queued.fetch_sub(1, SeqCst);
            return Ok(None);
        }
        let (tx, rx) = oneshot::channel();
        let id = line.next_id;
        line.next_id = line.next_id.wrapping_add(1);
        let waiter = Waiter { id, tx };
        if important {
            line.important.push_back(waiter);
        } else {
            line.sheddable.push_back(waiter);
        }
        Err((id, rx))
    }

    /// Hands free places to waiters, important ones first, each within its room.
    fn serve(self: &Arc<Self>, line: &mut Line) {
        if self.pressure.load(Relaxed) {
            return;
        }
        loop {
            let (deque, room) = if !line.important.is_empty() {
                (&mut line.important, self.room(true))
            } else if !line.sheddable.is_empty() {
                (&mut line.sheddable, self.room(false))
            } else {
                return;
            };
            if !self.try_enter(room) {
                return;
            }
            let Some(waiter) = deque.pop_front() else {
                self.inflight.fetch_sub(1, SeqCst);
                return;
            };
            self.queued.fetch_sub(1, SeqCst);
            self.admitted.fetch_add(1, Relaxed);
            let handoff = Handoff {
                shared: Arc::clone(self),
                armed: true,
            };
            if let Err(mut unopened) = waiter.tx.send(handoff) {
                // The waiter left (its deadline or its client); the place goes to the next.
                unopened.armed = false;
                self.admitted.fetch_sub(1, Relaxed);
                self.inflight.fetch_sub(1, SeqCst);
            }
        }
    }

    /// Frees a place and, when someone waits, hands it on.
    fn release(self: &Arc<Self>) {
        self.inflight.fetch_sub(1, SeqCst);
        if self.queued.load(SeqCst) > 0 {
            self.serve(&mut lock(&self.line));
        }
    }

    /// Feeds one latency sample, with `inflight` pieces of work running when it ended. A sample
    /// that finds another being recorded is skipped: the window only needs most of them.
    fn sample(self: &Arc<Self>, rtt: Duration, inflight: usize) {
        let Ok(mut e) = self.estimate.try_lock() else {
            return;
        };
        let Some(window) = e.add(rtt, inflight) else {
            return;
        };
        self.recent_rtt.store((window.short * 1e9) as u64, Relaxed);
        if !self.settings.adaptive {
            return;
        }
        let next = e.adapt(
            &window,
            self.settings.min.max(1) as f64,
            self.settings.max.max(1) as f64,
        );
        let grew = next as usize > self.limit.swap(next as usize, Relaxed);
        drop(e);
        if grew && self.queued.load(SeqCst) > 0 {
            self.serve(&mut lock(&self.line));
        }
    }
}

impl Handoff {
    fn open(mut self) -> Permit {
        self.armed = false;
        Permit {
            shared: Arc::clone(&self.shared),
            critical: false,
        }
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        if self.armed {
            self.shared.admitted.fetch_sub(1, Relaxed);
            self.shared.release();
        }
    }
}

impl Permit {
    /// Frees the place and feeds the limit with how long the work took.
    pub fn finish(self, took: Duration) {
        if !self.critical {
            // The others in flight: this one still holds its place until dropped.
            let others = self.shared.inflight.load(Relaxed).saturating_sub(1);
            self.shared.sample(took, others);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.critical {
            self.shared.release();
        }
    }
}

#[cfg(test)]
mod tests;
