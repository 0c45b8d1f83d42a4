//! `Breakers`: owns the circuit of every dependency (PostgreSQL, Redis, SMTP, each webhook host)
//! and the record of their changes.
//!
//! The circuits themselves are read and fed by callers without a message ([`crate::Circuit`]:
//! one short lock to admit, one to report), because a closed circuit must cost the hot path
//! nothing like a mailbox hop (21 µs across threads here). The actor owns what is not on the
//! hot path:
//! - [`CircuitFor`] → [`Circuit`]: the circuit of a dependency named at run time (a webhook
//!   host), made on first use with the default settings. Their number is bounded: past
//!   `max_circuits`, a closed circuit is forgotten to make room.
//! - [`crate::Stop`].
//!
//! The fixed dependencies' circuits are registered on the [`BreakerBoard`] before the actors
//! that use them start. The board keeps the last changes of every circuit and is read without a
//! message by readiness, metrics and stats.

use crate::admission::{serve, Envelope, Reply, Request};
use crate::breaker::{
    BreakerSettings, Circuit, CircuitSnapshot, CircuitState, Observer, Transition,
};
use crate::crash::crashable;
use crate::supervision::{Resilient, Stop, Supervision};
use actix::{Actor, ActorContext, Context, Handler};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

const HISTORY: usize = 64;

/// One change of one circuit, for people.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub circuit: String,
    pub from: CircuitState,
    pub to: CircuitState,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// Every circuit, readable without a message.
#[derive(Clone, Default)]
pub struct BreakerBoard {
    circuits: Arc<RwLock<BTreeMap<String, Circuit>>>,
    history: Arc<Mutex<VecDeque<Change>>>,
}

impl BreakerBoard {
    pub fn new() -> Self {
        Self::default()
    }

    /// The circuit named `name`, made with `settings` if it does not exist yet.
    pub fn register(&self, name: &str, settings: BreakerSettings) -> Circuit {
        let mut circuits = self.circuits.write().unwrap_or_else(|p| p.into_inner());
        circuits
            .entry(name.to_owned())
            .or_insert_with(|| Circuit::new(name, settings, Some(self.observer())))
            .clone()
    }

    fn observer(&self) -> Observer {
        let history = Arc::clone(&self.history);
        Arc::new(move |name: &str, t: Transition| {
            let change = Change {
                circuit: name.to_owned(),
                from: t.from,
                to: t.to,
                at: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            };
            if let Ok(mut h) = history.lock() {
                if h.len() == HISTORY {
                    h.pop_front();
                }
                h.push_back(change);
            }
        })
    }

    pub fn get(&self, name: &str) -> Option<Circuit> {
        self.circuits.read().ok()?.get(name).cloned()
    }

    pub fn snapshot(&self) -> Vec<CircuitSnapshot> {
        self.circuits
            .read()
            .map(|c| c.values().map(Circuit::snapshot).collect())
            .unwrap_or_default()
    }

    /// The latest changes, oldest first.
    pub fn history(&self) -> Vec<Change> {
        self.history
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The circuit of a dependency named at run time.
pub struct CircuitFor(pub String);

impl Request for CircuitFor {
    type Reply = Circuit;
}

pub struct Breakers {
    board: BreakerBoard,
    defaults: BreakerSettings,
    max_circuits: usize,
    supervision: Supervision,
}

impl Breakers {
    pub fn new(
        board: BreakerBoard,
        defaults: BreakerSettings,
        max_circuits: usize,
        supervision: Supervision,
    ) -> Self {
        Self {
            board,
            defaults,
            max_circuits,
            supervision,
        }
    }
}

impl Actor for Breakers {
    type Context = Context<Self>;
}

impl Resilient for Breakers {
    fn supervision(&mut self) -> &mut Supervision {
        &mut self.supervision
    }

    /// Nothing to rebuild: circuits live on the board, each behind its own lock.
    fn rebuild(&mut self, _ctx: &mut Context<Self>) {}
}

impl Handler<Envelope<CircuitFor>> for Breakers {
    type Result = ();

    fn handle(&mut self, envelope: Envelope<CircuitFor>, ctx: &mut Context<Self>) {
        serve(self, ctx, envelope, |breakers, CircuitFor(name), _| {
            if let Some(circuit) = breakers.board.get(&name) {
                return Reply::Ready(circuit);
            }
            let mut circuits = breakers
                .board
                .circuits
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if circuits.len() >= breakers.max_circuits {
                let idle = circuits
                    .iter()
                    .find(|(_, c)| c.state() == CircuitState::Closed)
                    .map(|(n, _)| n.clone());
                if let Some(idle) = idle {
                    circuits.remove(&idle);
                }
            }
            drop(circuits);
            Reply::Ready(breakers.board.register(&name, breakers.defaults))
        });
    }
}

impl Handler<Stop> for Breakers {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

crashable!(Breakers);
