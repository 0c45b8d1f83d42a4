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

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

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

/// Samples judged together.
pub const WINDOW: u32 = 32;
/// A window this much slower than the long-term average shrinks the limit.
pub const TOLERANCE: f64 = 2.0;
/// Samples the long-term average spans.
const LONG_SAMPLES: f64 = 600.0;
/// The weight of one window's proposal in the limit.
const SMOOTHING: f64 = 0.2;

#[derive(Debug)]
struct Estimate {
    limit: f64,
    long: Option<f64>,
    sum: f64,
    samples: u32,
    busiest: usize,
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
                estimate: Mutex::new(Estimate {
                    limit: initial as f64,
                    long: None,
                    sum: 0.0,
                    samples: 0,
                    busiest: 0,
                }),
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
        e.sum += rtt.as_secs_f64();
        e.samples += 1;
        e.busiest = e.busiest.max(inflight + 1);
        if e.samples < WINDOW {
            return;
        }
        let short = e.sum / f64::from(e.samples);
        let busiest = e.busiest as f64;
        (e.sum, e.samples, e.busiest) = (0.0, 0, 0);
        self.recent_rtt.store((short * 1e9) as u64, Relaxed);
        // The long-term average follows a steady queue (a closed loop of many clients) within
        // about LONG_SAMPLES samples, so only a sudden one shrinks the limit; once the queue has
        // drained (short far below long) it decays fast, so the limit recovers.
        let mut long = e.long.map_or(short, |l| {
            l + (short - l) * (f64::from(WINDOW) / LONG_SAMPLES)
        });
        if long > 2.0 * short {
            long *= 0.9;
        }
        e.long = Some(long);
        if !self.settings.adaptive {
            return;
        }
        let limit = e.limit;
        let gradient = (TOLERANCE * long / short.max(f64::MIN_POSITIVE)).clamp(0.5, 1.0);
        let mut proposal = limit * gradient + limit.sqrt();
        // A limit far above the work in flight is not probed further.
        if proposal > limit && busiest * 2.0 < limit {
            proposal = limit;
        }
        let next = (limit * (1.0 - SMOOTHING) + proposal * SMOOTHING).clamp(
            self.settings.min.max(1) as f64,
            self.settings.max.max(1) as f64,
        );
        e.limit = next;
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
mod tests {
    use super::*;

    fn limit(initial: usize) -> ConcurrencyLimit {
        ConcurrencyLimit::new(LimitSettings {
            initial,
            min: 4,
            max: 1000,
            ..LimitSettings::default()
        })
    }

    fn fixed(initial: usize) -> ConcurrencyLimit {
        ConcurrencyLimit::new(LimitSettings {
            adaptive: false,
            initial,
            min: 1,
            max: 1000,
        })
    }

    fn windows(l: &ConcurrencyLimit, n: u32, rtt: Duration) {
        for _ in 0..n * WINDOW {
            l.sample(rtt, l.limit());
        }
    }

    fn far() -> Option<Instant> {
        Some(Instant::now() + Duration::from_secs(30))
    }

    #[test]
    fn without_waiting_browsing_is_shed_before_checkout_and_critical_work_never() {
        let l = limit(8);
        let browsing: Vec<_> = (0..6)
            .filter_map(|_| l.try_acquire(Criticality::Sheddable))
            .collect();
        assert_eq!(browsing.len(), 6, "three quarters of 8");
        assert!(l.try_acquire(Criticality::Sheddable).is_none());
        let checkouts: Vec<_> = (0..4)
            .filter_map(|_| l.try_acquire(Criticality::Important))
            .collect();
        assert_eq!(checkouts.len(), 2, "up to the full limit");
        assert!(l.try_acquire(Criticality::Critical).is_some());
        drop(browsing);
        assert!(l.try_acquire(Criticality::Sheddable).is_some());
        assert_eq!(l.snapshot().shed, 3);
    }

    #[tokio::test]
    async fn pressure_refuses_all_but_critical_work_at_once_until_lifted() {
        let l = fixed(1);
        let held = l.try_acquire(Criticality::Important);
        let waiting = tokio::spawn({
            let l = l.clone();
            async move { l.acquire(Criticality::Important, far()).await.is_some() }
        });
        while l.snapshot().queued == 0 {
            tokio::task::yield_now().await;
        }
        l.set_pressure(true);
        assert!(!waiting.await.unwrap(), "those in line are refused too");
        assert_eq!(l.snapshot().queued, 0);
        drop(held);
        assert!(l.acquire(Criticality::Important, far()).await.is_none());
        assert!(l.acquire(Criticality::Sheddable, far()).await.is_none());
        assert!(l.acquire(Criticality::Critical, None).await.is_some());
        l.set_pressure(false);
        assert!(l.acquire(Criticality::Sheddable, far()).await.is_some());
    }

    #[tokio::test]
    async fn a_closed_loop_of_many_clients_is_served_not_refused() {
        // 64 clients, each waiting for its answer, against a limit of 4: they take turns.
        let l = fixed(4);
        let clients = (0..64).map(|_| {
            let l = l.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    let deadline = Some(Instant::now() + Duration::from_secs(5));
                    let permit = l.acquire(Criticality::Important, deadline).await?;
                    assert!(l.snapshot().inflight <= 4, "never above the limit");
                    tokio::task::yield_now().await;
                    permit.finish(Duration::from_micros(200));
                }
                Some(())
            })
        });
        for client in clients.collect::<Vec<_>>() {
            assert_eq!(client.await.unwrap(), Some(()), "a client was refused");
        }
        let s = l.snapshot();
        assert_eq!((s.shed, s.inflight, s.queued), (0, 0, 0));
        assert_eq!(s.admitted, 64 * 20);
        assert!(s.waited > 0, "the limit was full at times: {s:?}");
    }

    // Paused time: a wait would advance the clock, so an unmoved clock proves none happened.
    #[tokio::test(start_paused = true)]
    async fn work_whose_expected_wait_passes_its_deadline_is_refused_at_once() {
        let l = fixed(2);
        // Work takes 100 ms here.
        windows(&l, 1, Duration::from_millis(100));
        let held: Vec<_> = (0..2)
            .filter_map(|_| l.try_acquire(Criticality::Important))
            .collect();
        // Two places free up every 100 ms: the next in 50 ms, and its work takes 100 more.
        let asked = Instant::now();
        let deadline = asked + Duration::from_millis(120);
        let refused = l.acquire(Criticality::Important, Some(deadline)).await;
        assert!(refused.is_none());
        assert_eq!(Instant::now(), asked, "refused without waiting");
        // With time enough it waits and is served once a place frees up.
        let waiting = tokio::spawn({
            let l = l.clone();
            async move { l.acquire(Criticality::Important, far()).await.is_some() }
        });
        while l.snapshot().queued == 0 {
            tokio::task::yield_now().await;
        }
        drop(held);
        assert!(waiting.await.unwrap());
        assert_eq!(l.snapshot().shed, 1);
    }

    #[tokio::test]
    async fn a_freed_place_goes_to_a_waiting_checkout_before_waiting_browsing() {
        let l = fixed(4);
        let mut held: Vec<_> = (0..4)
            .filter_map(|_| l.try_acquire(Criticality::Important))
            .collect();
        let browse = tokio::spawn({
            let l = l.clone();
            async move { l.acquire(Criticality::Sheddable, far()).await.map(drop) }
        });
        while l.snapshot().queued < 1 {
            tokio::task::yield_now().await;
        }
        let (tx, rx) = oneshot::channel();
        let checkout = tokio::spawn({
            let l = l.clone();
            async move {
                let permit = l.acquire(Criticality::Important, far()).await;
                let _ = tx.send(());
                permit
            }
        });
        while l.snapshot().queued < 2 {
            tokio::task::yield_now().await;
        }
        held.pop();
        rx.await.unwrap();
        assert_eq!(l.snapshot().queued, 1, "browsing still waits");
        // Browsing holds at most three quarters of the limit: it waits for two more places.
        held.pop();
        assert_eq!(l.snapshot().queued, 1);
        held.pop();
        assert_eq!(browse.await.unwrap(), Some(()));
        assert!(checkout.await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_the_line_and_loses_no_place() {
        let l = fixed(1);
        let held = l.try_acquire(Criticality::Important);
        let gives_up = tokio::spawn({
            let l = l.clone();
            async move { l.acquire(Criticality::Important, far()).await.map(drop) }
        });
        while l.snapshot().queued == 0 {
            tokio::task::yield_now().await;
        }
        gives_up.abort();
        assert!(gives_up.await.is_err());
        assert_eq!(l.snapshot().queued, 0);
        drop(held);
        assert_eq!(l.snapshot().inflight, 0);
        assert!(l.acquire(Criticality::Important, far()).await.is_some());
    }

    #[test]
    fn a_sudden_queue_shrinks_the_limit_and_a_steady_one_is_tolerated() {
        let l = limit(100);
        let normal = Duration::from_millis(10);
        windows(&l, 5, normal);
        let grown = l.limit();
        assert!(grown > 100, "no queueing probes upwards: {grown}");
        // Latency jumps fourfold: the limit shrinks at once...
        windows(&l, 3, Duration::from_millis(40));
        let shrunk = l.limit();
        assert!(
            shrunk < grown * 9 / 10,
            "a sudden queue shrinks it: {grown} -> {shrunk}"
        );
        // ...but the same latency held steadily (a closed loop's queue) stops shrinking it.
        windows(&l, 60, Duration::from_millis(40));
        let steady = l.limit();
        windows(&l, 10, Duration::from_millis(40));
        assert!(l.limit() >= steady, "{steady} -> {}", l.limit());
        assert!(steady >= 4 * 2, "not driven to the floor: {steady}");
        // Far above the work in flight, it does not grow.
        let idle = l.limit();
        for _ in 0..5 * WINDOW {
            l.sample(normal, 1);
        }
        assert!(l.limit() <= idle);
    }

    #[test]
    fn single_slow_samples_within_a_window_do_not_shrink_it() {
        let l = limit(100);
        windows(&l, 3, Duration::from_millis(10));
        let before = l.limit();
        // One commit in eight waits for an fsync ten times as long: the window's mean holds.
        for i in 0..4 * WINDOW {
            let rtt = if i % 8 == 0 { 100 } else { 8 };
            l.sample(Duration::from_millis(rtt), l.limit());
        }
        assert!(l.limit() >= before, "{before} -> {}", l.limit());
    }
}
