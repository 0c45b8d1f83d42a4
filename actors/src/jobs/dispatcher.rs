//! `Jobs`, the dispatcher: the actor that ties the queue's modules together. It owns, per queue,
//! the runs in flight here and whether a claim is under way, the outcomes not yet written, and
//! the wake-ups owed to the other instances; what it promises is written atop `jobs.rs`.
//!
//! How it claims is in `claiming`, how it records outcomes in `recording`.

use super::board::JobsBoard;
use super::lease::{Reap, Release, DB_WAIT};
use super::outcome::Outcome;
use super::runner::Runners;
use super::settings::JobsSettings;
use super::wake::{listen, Wake};
use crate::admission::Handle;
use crate::crash::crashable;
use crate::db::Db;
use crate::supervision::{Resilient, Stop, Supervision};
use actix::fut::WrapFuture;
use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

mod claiming;
mod recording;

pub struct Jobs {
    db: Handle<Db>,
    settings: Arc<JobsSettings>,
    runners: Arc<Runners>,
    /// Per queue, the most jobs one run of its kinds takes (from the runners, once).
    batches: HashMap<String, usize>,
    /// The queues whose every kind runs in its claim (`in_claim`).
    in_claim: std::collections::HashSet<String>,
    board: JobsBoard,
    /// Per queue: jobs running here, and whether a claim is under way or wanted after it.
    running: HashMap<String, usize>,
    claiming: HashMap<String, bool>,
    stopping: bool,
    last_notify: Option<Instant>,
    notify_pending: bool,
    listener: Option<tokio::sync::mpsc::Sender<String>>,
    /// Queues to name in the next notification to the other instances.
    to_broadcast: std::collections::BTreeSet<String>,
    /// When each queue last claimed, and the queues whose next claim waits (while busy).
    last_claim: HashMap<String, Instant>,
    deferred: std::collections::HashSet<String>,
    /// Outcomes not written yet (queue, job, attempt, outcome), and whether a write is under way.
    outcomes: Vec<(String, Uuid, i32, Outcome)>,
    recording: bool,
    /// A claim was skipped because too many outcomes waited to be written.
    held_back: bool,
    /// Set at [`Stop`]: runs of effects start no more (`effects`).
    halt: Arc<AtomicBool>,
    supervision: Supervision,
}

/// A run ended: its jobs' outcomes.
struct Finished {
    queue: String,
    outcomes: Vec<(Uuid, i32, Outcome)>,
}

impl actix::Message for Finished {
    type Result = ();
}

/// Notifications are coalesced to one per this interval: a burst of checkouts wakes the other
/// instances once.
const NOTIFY_EVERY: Duration = Duration::from_millis(20);

impl Jobs {
    pub fn new(
        db: Handle<Db>,
        settings: JobsSettings,
        runners: Runners,
        board: JobsBoard,
        supervision: Supervision,
    ) -> Self {
        let mut batches: HashMap<String, usize> = HashMap::new();
        for (runner, queue) in runners.values() {
            let n = batches.entry(queue.clone()).or_insert(1);
            *n = (*n).max(runner.batch());
        }
        let in_claim: std::collections::HashSet<String> = runners
            .values()
            .filter(|(runner, _)| runner.in_claim().is_some())
            .map(|(_, queue)| queue.clone())
            .collect();
        for (kind, (runner, queue)) in &runners {
            assert!(
                runner.in_claim().is_some() || !in_claim.contains(queue),
                "{kind} runs apart, and queue {queue} has kinds that run in their claim"
            );
        }
        Self {
            db,
            settings: Arc::new(settings),
            runners: Arc::new(runners),
            batches,
            in_claim,
            board,
            running: HashMap::new(),
            claiming: HashMap::new(),
            stopping: false,
            last_notify: None,
            notify_pending: false,
            listener: None,
            to_broadcast: Default::default(),
            last_claim: HashMap::new(),
            deferred: Default::default(),
            outcomes: Vec::new(),
            recording: false,
            held_back: false,
            halt: Arc::default(),
            supervision,
        }
    }

    /// Marks a claim of `queue` scheduled, or no longer ([`JobsBoard::wake_needed`]).
    fn arm(&self, queue: &str, armed: bool) {
        if let Some(c) = self.board.counters(queue) {
            c.armed.store(armed, SeqCst);
        }
    }

    /// A run of `queue` started here: it holds one of the queue's places until it ends.
    fn place_taken(&mut self, queue: &str) {
        *self.running.entry(queue.to_owned()).or_default() += 1;
        if let Some(c) = self.board.counters(queue) {
            c.running.fetch_add(1, Relaxed);
        }
    }

    /// A run of `queue` ended.
    fn place_freed(&mut self, queue: &str) {
        if let Some(n) = self.running.get_mut(queue) {
            *n = n.saturating_sub(1);
        }
        if let Some(c) = self.board.counters(queue) {
            c.running.fetch_sub(1, Relaxed);
        }
    }

    /// The most jobs one run of this queue's kinds may take.
    fn batch_of(&self, queue: &str) -> usize {
        self.batches.get(queue).copied().unwrap_or(1)
    }

    fn broadcast(&mut self, ctx: &mut Context<Self>) {
        let Some(listener) = self.listener.clone() else {
            return;
        };
        let now = Instant::now();
        match self.last_notify {
            Some(at) if now.duration_since(at) < NOTIFY_EVERY => {
                if !self.notify_pending {
                    self.notify_pending = true;
                    ctx.run_later(NOTIFY_EVERY - now.duration_since(at), |act, ctx| {
                        act.notify_pending = false;
                        act.broadcast(ctx);
                    });
                }
            }
            _ => {
                self.last_notify = Some(now);
                let queues = std::mem::take(&mut self.to_broadcast);
                let _ = listener.try_send(queues.into_iter().collect::<Vec<_>>().join(","));
            }
        }
    }
}

impl Actor for Jobs {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.settings.poll_interval, |act, ctx| {
            if act.stopping {
                return;
            }
            let db = act.db.clone();
            ctx.spawn(
                async move { db.run_within(Reap, DB_WAIT).await }
                    .into_actor(act)
                    .map(|reaped, act, ctx| {
                        if let Ok(n) = reaped {
                            if n > 0 {
                                tracing::warn!(jobs = n, "jobs whose lease ran out were put back");
                            }
                        }
                        act.claim_all(ctx);
                    }),
            );
        });
        if let Some(pg) = self.settings.listen.clone() {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            self.listener = Some(tx);
            actix_rt::spawn(listen(
                pg,
                self.settings.instance.clone(),
                ctx.address().recipient(),
                rx,
                self.settings.poll_interval,
                self.board.clone(),
            ));
        }
        self.claim_all(ctx);
    }
}

impl Resilient for Jobs {
    fn supervision(&mut self) -> &mut Supervision {
        &mut self.supervision
    }

    /// The bookkeeping may be half-updated: the running counts are taken again from the
    /// counters the job tasks keep, and any claim in flight is allowed to be repeated.
    fn rebuild(&mut self, ctx: &mut Context<Self>) {
        self.claiming.clear();
        // The scheduled claims went with the old context: none is armed now.
        for queue in std::mem::take(&mut self.deferred) {
            self.arm(&queue, false);
        }
        self.running = self
            .board
            .queues
            .iter()
            .map(|(q, (_, c))| (q.clone(), c.running.load(Relaxed) as usize))
            .collect();
        self.claim_all(ctx);
    }
}

impl Handler<Wake> for Jobs {
    type Result = ();

    fn handle(&mut self, wake: Wake, ctx: &mut Context<Self>) {
        if wake.queues.is_empty() {
            self.claim_all(ctx);
        }
        for queue in &wake.queues {
            self.claim(queue, ctx);
        }
        if wake.broadcast {
            self.to_broadcast.extend(wake.queues);
            self.broadcast(ctx);
        }
    }
}

impl Handler<Finished> for Jobs {
    type Result = ();

    fn handle(&mut self, done: Finished, ctx: &mut Context<Self>) {
        self.place_freed(&done.queue);
        self.board
            .unrecorded
            .fetch_add(done.outcomes.len() as u64, Relaxed);
        for (id, attempt, outcome) in done.outcomes {
            self.outcomes
                .push((done.queue.clone(), id, attempt, outcome));
        }
        self.record(ctx);
        self.claim(&done.queue, ctx);
    }
}

impl Handler<Stop> for Jobs {
    type Result = actix::ResponseActFuture<Self, ()>;

    /// Stops claiming and starting effects; waits (up to the drain) until the runs here have
    /// ended, the claims under way have come back and every outcome is written, so that the
    /// release below gives back only jobs not done: an outcome still being written when the
    /// release ran would be lost, and its job (a mail accepted already) run again.
    fn handle(&mut self, _: Stop, _ctx: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        self.halt.store(true, SeqCst);
        self.listener = None;
        let (db, settings, board) = (
            self.db.clone(),
            Arc::clone(&self.settings),
            self.board.clone(),
        );
        Box::pin(
            async move {
                let until = Instant::now() + settings.drain;
                let busy = || -> bool {
                    board.snapshot().iter().map(|q| q.running_here).sum::<u64>() > 0
                        || board.unrecorded.load(Relaxed) > 0
                        || board.claims.load(Relaxed) > 0
                };
                while busy() && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let released = db
                    .run_within(
                        Release {
                            instance: settings.instance.clone(),
                        },
                        DB_WAIT,
                    )
                    .await;
                if let Ok(n) = released {
                    if n > 0 {
                        tracing::info!(jobs = n, "running jobs given back at shutdown");
                    }
                }
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop()),
        )
    }
}

crashable!(Jobs);
