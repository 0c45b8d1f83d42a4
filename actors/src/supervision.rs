//! Supervision owns an actor's restart record: after a panic the actor rebuilds its resource, in
//! the manner of OTP, at most `max_restarts` times within `within`.
//!
//! actix's own `Supervisor` only restarts an actor that stopped; a panic inside a handler kills
//! the actor's task and every later message gets `Closed`. Here the panic is caught at the
//! message boundary ([`crate::admission::serve`]), the caller gets [`crate::CallError::Panicked`],
//! and the actor rebuilds its resource in place, keeping its address and mailbox. Past the
//! intensity the actor stops and is reported [`ActorState::Failed`] instead of spinning.

use crate::stats::{ActorState, ActorStats};
use actix::{Actor, ActorContext, Context, Message};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub max_restarts: u32,
    pub within: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            within: Duration::from_secs(10),
        }
    }
}

/// How a child is started: its name, mailbox capacity, restart policy and the default deadline
/// for request-path calls to it.
#[derive(Debug, Clone)]
pub struct ActorSpec {
    pub name: &'static str,
    pub mailbox: usize,
    pub restart: RestartPolicy,
    pub call_deadline: Duration,
}

impl ActorSpec {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            mailbox: 256,
            restart: RestartPolicy::default(),
            call_deadline: Duration::from_secs(5),
        }
    }
    pub fn mailbox(mut self, capacity: usize) -> Self {
        self.mailbox = capacity;
        self
    }
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }
    pub fn call_deadline(mut self, deadline: Duration) -> Self {
        self.call_deadline = deadline;
        self
    }
}

/// The supervision record an actor carries: its stats and its recent restarts.
#[derive(Debug)]
pub struct Supervision {
    stats: Arc<ActorStats>,
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
}

impl Supervision {
    pub fn new(stats: Arc<ActorStats>, policy: RestartPolicy) -> Self {
        Self {
            stats,
            policy,
            recent: VecDeque::new(),
        }
    }

    pub fn stats(&self) -> &Arc<ActorStats> {
        &self.stats
    }

    /// Records a restart at `now`; false when it exceeds the intensity.
    fn admit_restart(&mut self, now: Instant) -> bool {
        while let Some(first) = self.recent.front() {
            if now.duration_since(*first) > self.policy.within {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() as u32 >= self.policy.max_restarts {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

/// An actor that owns a resource it can rebuild after a panic.
pub trait Resilient: Actor<Context = Context<Self>> {
    fn supervision(&mut self) -> &mut Supervision;

    /// Rebuilds the owned resource, which a panic may have left half-changed.
    fn rebuild(&mut self, ctx: &mut Context<Self>);
}

/// Called by [`crate::admission::serve`] when a handler panicked.
pub(crate) fn on_panic<A: Resilient>(act: &mut A, ctx: &mut Context<A>, what: String) {
    let sup = act.supervision();
    let stats = Arc::clone(&sup.stats);
    tracing::error!(actor = stats.name(), panic = %what, "actor handler panicked");
    stats.record_failure(what);
    if sup.admit_restart(Instant::now()) {
        stats.set_state(ActorState::Restarting);
        stats.restarted();
        act.rebuild(ctx);
        stats.set_state(ActorState::Running);
        tracing::warn!(actor = stats.name(), "actor restarted");
    } else {
        stats.set_state(ActorState::Failed);
        tracing::error!(
            actor = stats.name(),
            "restart intensity exceeded: actor failed"
        );
        ctx.stop();
    }
}

/// Asks an actor to stop after the messages already in its mailbox. Sent by [`crate::Tree`] on
/// shutdown; each actor releases its resource in `stopped`.
pub struct Stop;

impl Message for Stop {
    type Result = ();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intensity_allows_max_restarts_within_the_window_then_refuses() {
        let stats = Arc::new(ActorStats::new("t", 1));
        let mut sup = Supervision::new(
            stats,
            RestartPolicy {
                max_restarts: 2,
                within: Duration::from_secs(10),
            },
        );
        let t0 = Instant::now();
        assert!(sup.admit_restart(t0));
        assert!(sup.admit_restart(t0 + Duration::from_secs(1)));
        assert!(!sup.admit_restart(t0 + Duration::from_secs(2)));
        // Once the first two fall out of the window, restarts are allowed again.
        assert!(sup.admit_restart(t0 + Duration::from_secs(12)));
    }
}
