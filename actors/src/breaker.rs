//! Circuit breakers, one per dependency, in resilience4j's model.
//!
//! [`Breaker`] is the state machine, pure and driven by the `now` it is given (tests run it on a
//! virtual clock):
//! - closed: every call is admitted; the outcomes of the last `window` calls are kept. Once at
//!   least `minimum_calls` are in the window, a failure rate or a slow-call rate at or above its
//!   threshold opens the circuit.
//! - open: every call is refused with the time left open, until `open_for` has passed.
//! - half-open: at most `half_open_probes` calls are admitted; when all of them have reported,
//!   the same rates over those probes close the circuit or open it again. A probe dropped without
//!   an outcome frees its place for another.
//!
//! Every transition starts a new epoch; an outcome admitted in an earlier epoch (a call that began
//! while the circuit was closed and ends after it opened) is not counted in the new one.
//!
//! [`Circuit`] shares one breaker between threads behind a mutex held for a few instructions,
//! never across an await: the hot path neither sends a message nor waits for one, a closed circuit
//! costs one uncontended lock to admit and one to report, and an open circuit refuses in the same
//! time. Transitions are logged, counted, and handed to the [`crate::Breakers`] actor's observer.

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Failed calls / calls in the window at or above which the circuit opens (0.0-1.0).
    pub failure_rate: f64,
    /// Slow calls / calls in the window at or above which the circuit opens (0.0-1.0).
    pub slow_call_rate: f64,
    /// A call that took at least this long is slow.
    pub slow_call: Duration,
    /// How many of the last calls the closed circuit judges by.
    pub window: u32,
    /// No judgement before this many calls are in the window.
    pub minimum_calls: u32,
    pub open_for: Duration,
    pub half_open_probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_rate: 0.5,
            slow_call_rate: 1.0,
            slow_call: Duration::from_secs(2),
            window: 20,
            minimum_calls: 10,
            open_for: Duration::from_secs(5),
            half_open_probes: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
    /// 0 closed, 1 half-open, 2 open: the metric's value.
    pub fn level(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

/// Leave to make one call; hand it back with the call's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    epoch: u64,
    probe: bool,
}

#[derive(Debug, Clone, Copy)]
struct Outcome {
    failed: bool,
    slow: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: CircuitState,
    pub to: CircuitState,
}

#[derive(Debug)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32 },
}

#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: State,
    epoch: u64,
    outcomes: VecDeque<Outcome>,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: State::Closed,
            epoch: 0,
            outcomes: VecDeque::new(),
        }
    }

    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// The state at `now` (an open circuit past its wait reads half-open).
    pub fn state(&self, now: Instant) -> CircuitState {
        match self.state {
            State::Closed => CircuitState::Closed,
            State::Open { until } if now < until => CircuitState::Open,
            State::Open { .. } | State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// How long the circuit stays open from `now` (zero unless open).
    pub fn open_for(&self, now: Instant) -> Duration {
        match self.state {
            State::Open { until } => until.saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    fn kind(&self) -> CircuitState {
        match self.state {
            State::Closed => CircuitState::Closed,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
            State::Open { .. } => CircuitState::Open,
        }
    }

    fn enter(&mut self, state: State) -> Transition {
        let from = self.kind();
        self.state = state;
        self.epoch += 1;
        self.outcomes.clear();
        Transition {
            from,
            to: self.kind(),
        }
    }

    /// Admits one call at `now`, or refuses it with the time the circuit stays open (at least
    /// a millisecond while half-open probes are all out).
    pub fn admit(&mut self, now: Instant) -> (Result<Ticket, Duration>, Option<Transition>) {
        let mut transition = None;
        if let State::Open { until } = self.state {
            if now < until {
                return (Err(until - now), None);
            }
            transition = Some(self.enter(State::HalfOpen { admitted: 0 }));
        }
        let epoch = self.epoch;
        let admitted = match &mut self.state {
            State::Closed => Ok(Ticket {
                epoch,
                probe: false,
            }),
            State::HalfOpen { admitted } if *admitted < self.settings.half_open_probes => {
                *admitted += 1;
                Ok(Ticket { epoch, probe: true })
            }
            State::HalfOpen { .. } => {
                Err(Duration::from_millis(1).max(self.settings.open_for / 10))
            }
            State::Open { until } => Err(until.saturating_duration_since(now)),
        };
        (admitted, transition)
    }

    /// A probe that will never report (its caller went away) frees its place.
    pub fn release(&mut self, ticket: Ticket) {
        if ticket.epoch != self.epoch || !ticket.probe {
            return;
        }
        if let State::HalfOpen { admitted } = &mut self.state {
            *admitted = admitted.saturating_sub(1);
        }
    }

    /// Reports the outcome of an admitted call that took `took`.
    pub fn record(
        &mut self,
        ticket: Ticket,
        failed: bool,
        took: Duration,
        now: Instant,
    ) -> Option<Transition> {
        if ticket.epoch != self.epoch {
            return None;
        }
        let outcome = Outcome {
            failed,
            slow: took >= self.settings.slow_call,
        };
        match self.state {
            State::Closed => {
                self.outcomes.push_back(outcome);
                while self.outcomes.len() > self.settings.window.max(1) as usize {
                    self.outcomes.pop_front();
                }
                let enough = self.outcomes.len() >= self.settings.minimum_calls.max(1) as usize;
                (enough && self.tripped()).then(|| self.trip(now))
            }
            State::HalfOpen { .. } => {
                self.outcomes.push_back(outcome);
                if self.outcomes.len() < self.settings.half_open_probes.max(1) as usize {
                    return None;
                }
                Some(if self.tripped() {
                    self.trip(now)
                } else {
                    self.enter(State::Closed)
                })
            }
            State::Open { .. } => None,
        }
    }

    fn tripped(&self) -> bool {
        let n = self.outcomes.len() as f64;
        let failed = self.outcomes.iter().filter(|o| o.failed).count() as f64;
        let slow = self.outcomes.iter().filter(|o| o.slow).count() as f64;
        failed / n >= self.settings.failure_rate || slow / n >= self.settings.slow_call_rate
    }

    fn trip(&mut self, now: Instant) -> Transition {
        let until = now + self.settings.open_for;
        self.enter(State::Open { until })
    }
}

/// Called on every transition of a circuit, outside its lock.
pub type Observer = Arc<dyn Fn(&str, Transition) + Send + Sync>;

#[derive(Debug, Default)]
struct Counters {
    admitted: AtomicU64,
    refused: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
    opened: AtomicU64,
}

struct Shared {
    name: String,
    breaker: Mutex<Breaker>,
    counters: Counters,
    observer: Option<Observer>,
}

/// One dependency's breaker, shared by every caller of that dependency.
#[derive(Clone)]
pub struct Circuit {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Circuit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Circuit")
            .field("name", &self.shared.name)
            .finish()
    }
}

/// A refused call: the circuit is open for `retry_after` more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open for {retry_after:?} more")]
pub struct Open {
    pub retry_after: Duration,
}

/// An admitted call. Report its outcome with [`Call::succeeded`] or [`Call::failed`]; dropping
/// it unreported frees a half-open probe's place without judging.
#[derive(Debug)]
pub struct Call {
    circuit: Circuit,
    ticket: Option<Ticket>,
    started: Instant,
}

impl Call {
    pub fn succeeded(self) {
        self.finish(false);
    }
    pub fn failed(self) {
        self.finish(true);
    }
    pub fn finish(mut self, failed: bool) {
        if let Some(ticket) = self.ticket.take() {
            let now = Instant::now();
            self.circuit
                .record_at(ticket, failed, now.duration_since(self.started), now);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            if let Ok(mut breaker) = self.circuit.shared.breaker.lock() {
                breaker.release(ticket);
            }
        }
    }
}

/// A point-in-time view of one circuit.
#[derive(Debug, Clone, Serialize)]
pub struct CircuitSnapshot {
    pub name: String,
    pub state: CircuitState,
    /// Milliseconds the circuit stays open (0 unless open).
    pub open_for_ms: u64,
    pub admitted: u64,
    pub refused: u64,
    pub failures: u64,
    pub slow_calls: u64,
    pub times_opened: u64,
}

impl Circuit {
    pub fn new(
        name: impl Into<String>,
        settings: BreakerSettings,
        observer: Option<Observer>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                name: name.into(),
                breaker: Mutex::new(Breaker::new(settings)),
                counters: Counters::default(),
                observer,
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        // The lock is never held across a panic point that leaves the breaker half-changed.
        self.shared
            .breaker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn observe(&self, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        if t.to == CircuitState::Open {
            self.shared.counters.opened.fetch_add(1, Relaxed);
        }
        tracing::warn!(circuit = %self.shared.name, from = t.from.as_str(), to = t.to.as_str(), "circuit changed");
        if let Some(observer) = &self.shared.observer {
            observer(&self.shared.name, t);
        }
    }

    /// Asks leave for one call now.
    pub fn try_call(&self) -> Result<Call, Open> {
        self.try_call_at(Instant::now())
    }

    pub fn try_call_at(&self, now: Instant) -> Result<Call, Open> {
        let (admitted, transition) = self.lock().admit(now);
        self.observe(transition);
        match admitted {
            Ok(ticket) => {
                self.shared.counters.admitted.fetch_add(1, Relaxed);
                Ok(Call {
                    circuit: self.clone(),
                    ticket: Some(ticket),
                    started: now,
                })
            }
            Err(retry_after) => {
                self.shared.counters.refused.fetch_add(1, Relaxed);
                Err(Open { retry_after })
            }
        }
    }

    fn record_at(&self, ticket: Ticket, failed: bool, took: Duration, now: Instant) {
        let (transition, slow) = {
            let mut breaker = self.lock();
            let slow = took >= breaker.settings().slow_call;
            (breaker.record(ticket, failed, took, now), slow)
        };
        if failed {
            self.shared.counters.failures.fetch_add(1, Relaxed);
        }
        if slow {
            self.shared.counters.slow.fetch_add(1, Relaxed);
        }
        self.observe(transition);
    }

    pub fn state(&self) -> CircuitState {
        self.lock().state(Instant::now())
    }

    pub fn snapshot(&self) -> CircuitSnapshot {
        let now = Instant::now();
        let (state, open_for) = {
            let breaker = self.lock();
            (breaker.state(now), breaker.open_for(now))
        };
        let c = &self.shared.counters;
        CircuitSnapshot {
            name: self.shared.name.clone(),
            state,
            open_for_ms: open_for.as_millis() as u64,
            admitted: c.admitted.load(Relaxed),
            refused: c.refused.load(Relaxed),
            failures: c.failures.load(Relaxed),
            slow_calls: c.slow.load(Relaxed),
            times_opened: c.opened.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failure_rate: 0.5,
            slow_call_rate: 0.8,
            slow_call: Duration::from_millis(100),
            window: 10,
            minimum_calls: 4,
            open_for: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    const FAST: Duration = Duration::from_millis(1);

    fn call(b: &mut Breaker, now: Instant, failed: bool, took: Duration) -> Option<Transition> {
        let (ticket, _) = b.admit(now);
        b.record(ticket.expect("admitted"), failed, took, now)
    }

    #[test]
    fn closed_stays_closed_below_the_minimum_number_of_calls_even_if_all_fail() {
        let mut b = Breaker::new(settings());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(call(&mut b, t0, true, FAST), None);
        }
        assert_eq!(b.state(t0), CircuitState::Closed);
        let opened = call(&mut b, t0, true, FAST).expect("the fourth failure opens");
        assert_eq!(
            (opened.from, opened.to),
            (CircuitState::Closed, CircuitState::Open)
        );
    }

    #[test]
    fn closed_opens_at_the_failure_rate_over_the_sliding_window() {
        let mut b = Breaker::new(settings());
        let t0 = Instant::now();
        // 10 successes, then failures push them out of the 10-call window one by one.
        for _ in 0..10 {
            call(&mut b, t0, false, FAST);
        }
        for i in 0..4 {
            assert_eq!(
                call(&mut b, t0, true, FAST),
                None,
                "failure {i}: 4/10 is below 50%"
            );
        }
        assert!(call(&mut b, t0, true, FAST).is_some(), "5/10 failed: opens");
        assert_eq!(b.state(t0), CircuitState::Open);
    }

    #[test]
    fn closed_opens_at_the_slow_call_rate() {
        let mut b = Breaker::new(settings());
        let t0 = Instant::now();
        let slow = Duration::from_millis(150);
        for _ in 0..3 {
            call(&mut b, t0, false, slow);
        }
        call(&mut b, t0, false, FAST);
        assert_eq!(b.state(t0), CircuitState::Closed, "3/4 slow is below 80%");
        assert!(call(&mut b, t0, false, slow).is_some(), "4/5 slow opens");
    }

    #[test]
    fn open_refuses_with_the_time_left_then_turns_half_open_after_the_wait() {
        let mut b = Breaker::new(settings());
        let t0 = Instant::now();
        for _ in 0..4 {
            call(&mut b, t0, true, FAST);
        }
        let (refused, _) = b.admit(t0 + Duration::from_secs(2));
        assert_eq!(refused, Err(Duration::from_secs(3)));
        let later = t0 + Duration::from_secs(5);
        assert_eq!(b.state(later), CircuitState::HalfOpen);
        let (probe, transition) = b.admit(later);
        assert!(probe.is_ok());
        assert_eq!(
            transition,
            Some(Transition {
                from: CircuitState::Open,
                to: CircuitState::HalfOpen
            })
        );
    }

    fn opened_then_half_open(b: &mut Breaker, t0: Instant) -> Instant {
        for _ in 0..4 {
            call(b, t0, true, FAST);
        }
        t0 + Duration::from_secs(5)
    }

    #[test]
    fn half_open_admits_only_its_probes_and_closes_when_they_succeed() {
        let mut b = Breaker::new(settings());
        let t0 = Instant::now();
        let t = opened_then_half_open(&mut b, t0);
        let first = b.admit(t).0.expect("probe 1");
        let second = b.admit(t).0.expect("probe 2");
        assert!(b.admit(t).0.is_err(), "a third call waits for the probes");
        assert_eq!(
            b.record(first, false, FAST, t),
            None,
            "one probe is not a verdict"
        );
        let closed = b.record(second, false, FAST, t).expect("verdict");
        assert_eq!(closed.to, CircuitState::Closed);
        assert!(b.admit(t).0.is_ok());
    }

    #[test]
    fn half_open_reopens_when_the_probes_fail_and_waits_the_full_time_again() {
        let mut b = Breaker::new(settings());
        let t0 = Instant::now();
        let t = opened_then_half_open(&mut b, t0);
        let first = b.admit(t).0.expect("probe 1");
        let second = b.admit(t).0.expect("probe 2");
        b.record(first, true, FAST, t);
        assert_eq!(
            b.record(second, false, FAST, t).map(|x| x.to),
            Some(CircuitState::Open)
        );
        assert_eq!(
            b.admit(t + Duration::from_secs(1)).0,
            Err(Duration::from_secs(4))
        );
    }

    #[test]
    fn a_released_probe_frees_its_place_and_stale_outcomes_are_ignored() {
        let mut b = Breaker::new(settings());
        let t0 = Instant::now();
        let before = b.admit(t0).0.expect("closed-era call");
        let t = opened_then_half_open(&mut b, t0);
        let first = b.admit(t).0.expect("probe 1");
        let _second = b.admit(t).0.expect("probe 2");
        b.release(first);
        let third = b.admit(t).0.expect("the released place is free again");
        // The call admitted while closed reports a failure now: it judges nothing.
        assert_eq!(b.record(before, true, FAST, t), None);
        assert_eq!(b.record(third, false, FAST, t), None);
        assert_eq!(b.state(t), CircuitState::HalfOpen);
    }

    #[test]
    fn circuit_counts_and_tells_its_observer_of_every_change() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let observer: Observer = Arc::new(move |name: &str, t: Transition| {
            log.lock().unwrap().push((name.to_owned(), t.to));
        });
        let circuit = Circuit::new("postgres", settings(), Some(observer));
        let t0 = Instant::now();
        for _ in 0..4 {
            circuit.try_call_at(t0).expect("closed").failed();
        }
        let refused = circuit.try_call().expect_err("open");
        assert!(refused.retry_after > Duration::from_secs(4));
        let snap = circuit.snapshot();
        assert_eq!(
            (snap.state, snap.failures, snap.refused, snap.times_opened),
            (CircuitState::Open, 4, 1, 1)
        );
        assert_eq!(
            *seen.lock().unwrap(),
            vec![("postgres".to_owned(), CircuitState::Open)]
        );
        // Dropping an unreported half-open probe frees the place.
        let later = t0 + Duration::from_secs(6);
        drop(circuit.try_call_at(later).expect("probe"));
        let a = circuit.try_call_at(later).expect("probe again");
        let b = circuit.try_call_at(later).expect("second probe");
        a.succeeded();
        b.succeeded();
        assert_eq!(circuit.state(), CircuitState::Closed);
    }

    #[test]
    fn a_thousand_concurrent_callers_against_a_half_open_circuit_send_only_its_probes() {
        let circuit = Circuit::new(
            "dependency",
            BreakerSettings {
                half_open_probes: 3,
                ..settings()
            },
            None,
        );
        let t0 = Instant::now();
        for _ in 0..4 {
            circuit.try_call_at(t0).expect("closed").failed();
        }
        // Outcomes are reported on the real clock: a second of margin past the wait.
        let later = t0 + Duration::from_secs(6);
        let reached = std::sync::atomic::AtomicU32::new(0);
        let start = std::sync::Barrier::new(1000);
        let calls: Vec<Option<Call>> = std::thread::scope(|scope| {
            let callers: Vec<_> = (0..1000)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        let call = circuit.try_call_at(later).ok()?;
                        // The dependency sees only what the circuit let through.
                        reached.fetch_add(1, Relaxed);
                        Some(call)
                    })
                })
                .collect();
            callers
                .into_iter()
                .map(|c| c.join().expect("caller"))
                .collect()
        });
        assert_eq!(reached.load(Relaxed), 3);
        assert_eq!(circuit.snapshot().refused, 997);
        for call in calls.into_iter().flatten() {
            call.succeeded();
        }
        assert_eq!(circuit.state(), CircuitState::Closed);
    }
}
