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
mod tests;
