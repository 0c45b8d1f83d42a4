//! `Jobs`: dispatches the durable jobs of the `jobs` table (an outbox written in the transactions
//! whose effects the jobs follow) to the runners registered per kind.
//!
//! Messages: [`Wake`] (a commit wrote jobs; sent by the request path after commit, never
//! waited on), [`Crash`](crate::Crash) (tests), [`Stop`]; its own job
//! tasks report back with `Finished`. What it promises:
//!
//! - **At least once.** A job is claimed with `FOR UPDATE SKIP LOCKED` under a lease
//!   (`locked_until`), renewed while it runs. A lease that runs out (a crashed or frozen
//!   instance) puts the job back within a lease plus a poll interval, so every job of a committed
//!   transaction runs, and none of a rolled-back one exists to run. A job may run twice after a
//!   crash, so every runner is idempotent; in normal operation (leases renewed) none does.
//! - **Bounded work.** Each queue runs at most its configured number of runs at once on this
//!   instance (a run is one job, or a batch of one kind for runners that take batches); a claim
//!   takes only what its free places can run, so a busy queue leaves the rest for other
//!   instances. While the foreground is busy ([`JobsSettings::busy`]) each queue has one place.
//! - **Cheap bookkeeping.** Outcomes are written in batches (whatever finished while the previous
//!   write was under way, at most [`RECORD_AT_MOST`] a write; no claims while more wait), and
//!   claims and outcomes commit without waiting for the WAL flush ([`ASYNC_COMMIT`] says why
//!   that is safe).
//! - **In the claim.** A kind whose work is writes to this database, or short and harmless to
//!   repeat ([`ClaimRunner`]), runs inside the transaction that claims its jobs: claim, work and
//!   outcome commit together or not at all, and that transaction is the lease ([`in_claim`]
//!   says how it is bounded and renewed).
//! - **Retries.** A failure is retried after exponential backoff with full jitter; after
//!   `max_attempts` the job is `dead`. A [`JobFailure::Deferred`] (the destination's circuit is
//!   open) moves the job later without spending an attempt.
//! - **Order.** Jobs sharing an `ordering_key` run one at a time, oldest first: an order's
//!   webhooks reach the merchant in the order its events happened.
//! - **Wake-ups.** A local [`Wake`] claims at once and sends one coalesced `NOTIFY` (after the
//!   commit, outside its transaction: a notifying commit takes a cluster-wide lock) so other
//!   instances wake too; they `LISTEN` on a connection of their own. While a queue's next claim
//!   is already scheduled (busy), commits send no wake-up ([`JobsBoard::wake_needed`]). Polling
//!   every `poll_interval` covers a lost notification or a broken listener.
//! - **Shutdown.** [`Stop`] stops claiming, lets running jobs finish for up to `drain`, then
//!   gives back what it still holds (not counted as an attempt).
//!
//! The database work goes through the [`Db`] actor like any other command, so the jobs share
//! PostgreSQL's circuit, deadlines and backpressure with the requests.

use crate::admission::Handle;
use crate::db::{Conn, Db, DbCommand, DbError};
use crate::supervision::{Resilient, Stop, Supervision};
use actix::fut::WrapFuture;
use actix::{Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler};
use futures_util::future::LocalBoxFuture;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use uuid::Uuid;

pub mod in_claim;
pub use in_claim::{ClaimRunner, InClaim};

/// The notification channel shared by every instance.
pub const CHANNEL: &str = "rampart_jobs";

/// Commits a job's bookkeeping, or a runner's own writes, without waiting for the WAL flush.
/// Safe for an at-least-once queue with idempotent runners: the WAL is replayed in order, so if
/// a crash loses a runner's write it also loses the outcome recorded after it, and the job runs
/// again; a lost claim only makes the job claimable again.
pub const ASYNC_COMMIT: &str = "SET LOCAL synchronous_commit = off";

/// Plans a statement on the queue table for each call (its own parameters, the table's size
/// now) and through the primary key or the due index, never a scan of the table: the queue
/// swings between empty and tens of thousands of rows within seconds, and a plan made at one end
/// (a prepared statement's cached generic plan, statistics taken before a burst) reads the whole
/// queue once per row at the other (claims of 200-500 ms, outcome writes of 1-2 s in bench runs
/// 20261202-042058, -064159 and -064606; plans in `bench/latest/`).
const PLANNED_BY_KEY: &str = "SET LOCAL plan_cache_mode = force_custom_plan; \
    SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; \
    SET LOCAL enable_mergejoin = off";

/// One claimed job, as a runner sees it.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: Uuid,
    pub merchant_id: Option<Uuid>,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    /// This run's attempt, from 1.
    pub attempt: i32,
    pub max_attempts: i32,
    pub created_at: SystemTime,
}

/// Why a run did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobFailure {
    /// Try again after backoff (dead once the attempts are spent).
    Retry(String),
    /// Nothing a retry can change (a refused destination, a malformed payload): dead now.
    Permanent(String),
    /// Not tried (the destination's circuit is open): again after the time given, no attempt spent.
    Deferred(Duration, String),
}

/// Runs the jobs of one kind. Runs may repeat: a runner must be idempotent.
pub trait JobRunner: Send + Sync + 'static {
    fn run(&self, job: ClaimedJob) -> LocalBoxFuture<'static, Result<(), JobFailure>>;

    /// How many jobs of this kind one run may take at once (one place of its queue).
    fn batch(&self) -> usize {
        1
    }

    /// Set for a kind that runs inside the transaction that claims its jobs ([`in_claim`]).
    fn in_claim(&self) -> Option<&dyn ClaimRunner> {
        None
    }

    /// Runs up to [`JobRunner::batch`] jobs at once: one result per job, in order.
    fn run_batch(
        &self,
        jobs: Vec<ClaimedJob>,
    ) -> LocalBoxFuture<'static, Vec<Result<(), JobFailure>>> {
        let runs: Vec<_> = jobs.into_iter().map(|job| self.run(job)).collect();
        Box::pin(async move {
            let mut results = Vec::with_capacity(runs.len());
            for run in runs {
                results.push(run.await);
            }
            results
        })
    }
}

pub struct JobsSettings {
    /// Names this instance in `locked_by`.
    pub instance: String,
    /// Concurrency per queue; only these queues are dispatched.
    pub queues: BTreeMap<String, usize>,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The sessions' own limits on idling inside a transaction and on one statement (`None`:
    /// none): a run in its claim keeps within these as well as the lease.
    pub session_idle_limit: Option<Duration>,
    pub session_statement_limit: Option<Duration>,
    /// How long [`Stop`] lets running jobs finish before giving them back.
    pub drain: Duration,
    /// The connection that `LISTEN`s (`None`: polling only).
    pub listen: Option<tokio_postgres::Config>,
    /// Whether requests are busy now: background work yields to them, each queue running one
    /// job at a time until they are not (`None`: never).
    pub busy: Option<Busy>,
}

/// Says whether the foreground is busy (read on every claim: atomics, no message).
pub type Busy = Arc<dyn Fn() -> bool + Send + Sync>;

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
    armed: AtomicBool,
}

impl QueueCounters {
    /// Counts a recorded outcome.
    fn count(&self, outcome: &Outcome) {
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
    queues: Arc<BTreeMap<String, (usize, Arc<QueueCounters>)>>,
    notifications: Arc<AtomicU64>,
    listening: Arc<AtomicBool>,
    /// Outcomes finished here and not written yet.
    unrecorded: Arc<AtomicU64>,
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

    fn counters(&self, queue: &str) -> Option<&Arc<QueueCounters>> {
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

/// Each kind's runner and queue, by kind name.
pub type Runners = HashMap<String, (Arc<dyn JobRunner>, String)>;

pub struct Jobs {
    db: Handle<Db>,
    settings: Arc<JobsSettings>,
    runners: Arc<Runners>,
    /// Per queue, the most jobs one run of its kinds takes (from the runners, once).
    batches: HashMap<String, usize>,
    /// The queues whose every kind runs in its claim ([`in_claim`]).
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
    supervision: Supervision,
}

/// A commit wrote jobs to `queues` (empty: any). Sent after the commit, never waited on. Only
/// the queues named are claimed from: a checkout's wake-up must not cost a claim of every queue.
#[derive(Debug, Clone, Default)]
pub struct Wake {
    pub queues: Vec<String>,
    /// Also tell the other instances (false for a wake that came from them).
    pub broadcast: bool,
}

impl actix::Message for Wake {
    type Result = ();
}

/// A run ended: its jobs' outcomes.
struct Finished {
    queue: String,
    outcomes: Vec<(Uuid, i32, Outcome)>,
}

impl actix::Message for Finished {
    type Result = ();
}

const DB_WAIT: Duration = Duration::from_secs(10);
/// How often a queue claims while the foreground is busy: each claim is a planned statement
/// and a transaction, whatever it takes.
const BUSY_CLAIM_EVERY: Duration = Duration::from_millis(250);
/// The most outcomes one write records; the rest go in the writes that follow. A write of
/// whatever finished meanwhile grew with a burst: in bench run 20261202-060757 writes of 10,000
/// outcomes and more ran into the statement timeout and were lost, the next ones were as large,
/// and those jobs ran again once their leases ran out (600-700 no-op jobs/s instead of 4,300 to
/// 5,900, for 70-80 s, in 4 of 11 rounds).
const RECORD_AT_MOST: usize = 1024;
/// No claims while this many outcomes wait to be written: the dispatcher runs no faster than it
/// records (claims resume when the writes catch up, at the latest at the next poll).
const UNRECORDED_AT_MOST: u64 = 4 * RECORD_AT_MOST as u64;

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
            supervision,
        }
    }

    fn claim_all(&mut self, ctx: &mut Context<Self>) {
        let queues: Vec<String> = self.settings.queues.keys().cloned().collect();
        for queue in queues {
            self.claim(&queue, ctx);
        }
    }

    /// Claims as many due jobs of `queue` as it has free places, unless a claim is under way
    /// (then one more follows it).
    fn claim(&mut self, queue: &str, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let Some(&concurrency) = self.settings.queues.get(queue) else {
            return;
        };
        let busy = self.settings.busy.as_ref().is_some_and(|busy| busy());
        let concurrency = if busy { 1 } else { concurrency };
        let running = self.running.get(queue).copied().unwrap_or(0);
        if running >= concurrency {
            return;
        }
        if self.board.unrecorded.load(Relaxed) >= UNRECORDED_AT_MOST {
            self.held_back = true;
            return;
        }
        if let Some(again) = self.claiming.get_mut(queue) {
            *again = true;
            return;
        }
        // While busy, a queue claims at most once per BUSY_CLAIM_EVERY: the jobs of a burst are
        // taken in a few large batches rather than many small ones.
        let now = Instant::now();
        if busy {
            if let Some(at) = self.last_claim.get(queue).map(|at| now.duration_since(*at)) {
                if at < BUSY_CLAIM_EVERY {
                    if self.deferred.insert(queue.to_owned()) {
                        self.arm(queue, true);
                        let queue = queue.to_owned();
                        ctx.run_later(BUSY_CLAIM_EVERY - at, move |act, ctx| {
                            act.deferred.remove(&queue);
                            act.arm(&queue, false);
                            // The commits that found it armed woke nobody, here or elsewhere.
                            act.to_broadcast.insert(queue.clone());
                            act.broadcast(ctx);
                            act.claim(&queue, ctx);
                        });
                    }
                    return;
                }
            }
        }
        self.last_claim.insert(queue.to_owned(), now);
        self.claiming.insert(queue.to_owned(), false);
        if self.in_claim.contains(queue) {
            return self.run_in_claim(queue.to_owned(), busy, ctx);
        }
        let command = Claim {
            queue: queue.to_owned(),
            limit: ((concurrency - running) * self.batch_of(queue)) as i64,
            lease: self.settings.lease,
            instance: self.settings.instance.clone(),
        };
        let db = self.db.clone();
        let queue = queue.to_owned();
        ctx.spawn(
            async move { db.run_within(command, DB_WAIT).await }
                .into_actor(self)
                .map(move |claimed, act, ctx| {
                    let again = act.claiming.remove(&queue).unwrap_or(false);
                    match claimed {
                        Ok(jobs) => act.start_jobs(jobs, ctx),
                        Err(e) => {
                            tracing::warn!(queue = %queue, error = %e, "claiming jobs failed")
                        }
                    }
                    if again {
                        act.claim(&queue, ctx);
                    }
                }),
        );
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

    /// Starts the claimed jobs: each run (one job, or a batch of one kind) takes one place.
    fn start_jobs(&mut self, jobs: Vec<ClaimedJob>, ctx: &mut Context<Self>) {
        let mut by_kind: BTreeMap<String, Vec<ClaimedJob>> = BTreeMap::new();
        for job in jobs {
            by_kind.entry(job.kind.clone()).or_default().push(job);
        }
        for (kind, mut jobs) in by_kind {
            let runner = self.runners.get(&kind).map(|r| Arc::clone(&r.0));
            let size = runner.as_ref().map_or(1, |r| r.batch().max(1));
            while !jobs.is_empty() {
                let rest = jobs.split_off(size.min(jobs.len()));
                self.start_run(std::mem::replace(&mut jobs, rest), runner.clone(), ctx);
            }
        }
    }

    fn start_run(
        &mut self,
        jobs: Vec<ClaimedJob>,
        runner: Option<Arc<dyn JobRunner>>,
        ctx: &mut Context<Self>,
    ) {
        let queue = jobs[0].queue.clone();
        self.place_taken(&queue);
        if let Some(counters) = self.board.counters(&queue) {
            counters.started.fetch_add(jobs.len() as u64, Relaxed);
        }
        let (db, settings, addr) = (self.db.clone(), Arc::clone(&self.settings), ctx.address());
        let span =
            tracing::info_span!("jobs", kind = %jobs[0].kind, first = %jobs[0].id, n = jobs.len());
        let work = async move {
            let done: Vec<(Uuid, i32)> = jobs.iter().map(|j| (j.id, j.attempt)).collect();
            let outcomes = execute(&db, &settings, runner, jobs).await;
            addr.do_send(Finished {
                queue,
                outcomes: done
                    .into_iter()
                    .zip(outcomes)
                    .map(|((id, attempt), o)| (id, attempt, o))
                    .collect(),
            });
        };
        actix_rt::spawn(tracing::Instrument::instrument(work, span));
    }

    /// Writes the outcomes gathered so far (up to [`RECORD_AT_MOST`]) in one statement, unless
    /// a write is under way: the outcomes that finish meanwhile go in the next one (a group
    /// commit). A job's place is free as soon as its outcome is here; its row says `running`
    /// until the write, which nobody else can take before its lease runs out.
    fn record(&mut self, ctx: &mut Context<Self>) {
        if self.recording || self.outcomes.is_empty() {
            return;
        }
        self.recording = true;
        let take = self.outcomes.len().min(RECORD_AT_MOST);
        let batch: Vec<_> = self.outcomes.drain(..take).collect();
        let command = Record {
            instance: self.settings.instance.clone(),
            outcomes: batch
                .iter()
                .map(|(_, id, attempt, o)| (*id, *attempt, o.clone()))
                .collect(),
        };
        let db = self.db.clone();
        ctx.spawn(
            async move { db.run_within(command, DB_WAIT).await }
                .into_actor(self)
                .map(move |recorded, act, ctx| {
                    act.recording = false;
                    act.board.unrecorded.fetch_sub(batch.len() as u64, Relaxed);
                    match recorded {
                        Ok(ids) => {
                            for (queue, id, _, outcome) in &batch {
                                let Some(c) = act.board.counters(queue) else { continue };
                                if ids.contains(id) {
                                    c.count(outcome);
                                } else {
                                    c.lease_lost.fetch_add(1, Relaxed);
                                }
                            }
                        }
                        // Not written again: the runners' writes commit without waiting for the
                        // flush, and a failure may be the crash that lost them (a later write
                        // would mark done what no longer is). The rows stay `running`: their
                        // leases run out and they run again.
                        Err(e) => tracing::warn!(jobs = batch.len(), error = %e, "recording job outcomes failed"),
                    }
                    act.record(ctx);
                    if act.held_back && act.board.unrecorded.load(Relaxed) < UNRECORDED_AT_MOST {
                        act.held_back = false;
                        act.claim_all(ctx);
                    }
                }),
        );
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

/// Runs one job or a batch, renewing their leases meanwhile; what should become of each.
async fn execute(
    db: &Handle<Db>,
    settings: &JobsSettings,
    runner: Option<Arc<dyn JobRunner>>,
    jobs: Vec<ClaimedJob>,
) -> Vec<Outcome> {
    let held: Vec<(Uuid, i32, i32)> = jobs
        .iter()
        .map(|j| (j.id, j.attempt, j.max_attempts))
        .collect();
    let results = match runner {
        None => jobs
            .iter()
            .map(|j| {
                Err(JobFailure::Permanent(format!(
                    "no runner for kind {}",
                    j.kind
                )))
            })
            .collect(),
        Some(runner) => {
            let run = if jobs.len() == 1 {
                let job = jobs.into_iter().next();
                Box::pin(async move {
                    match job {
                        Some(job) => vec![runner.run(job).await],
                        None => Vec::new(),
                    }
                }) as LocalBoxFuture<'static, Vec<Result<(), JobFailure>>>
            } else {
                runner.run_batch(jobs)
            };
            let renew = async {
                let mut every = tokio::time::interval(settings.lease / 3);
                every.tick().await;
                loop {
                    every.tick().await;
                    let renew = Renew {
                        held: held
                            .iter()
                            .map(|(id, attempt, _)| (*id, *attempt))
                            .collect(),
                        lease: settings.lease,
                        instance: settings.instance.clone(),
                    };
                    if let Ok(lost) = db.run_within(renew, DB_WAIT).await {
                        if lost > 0 {
                            tracing::warn!(jobs = lost, "job leases lost while running");
                        }
                    }
                }
            };
            tokio::select! {
                results = run => results,
                _ = renew => unreachable!("the renewal loop never ends"),
            }
        }
    };
    held.iter()
        .zip(one_each(results))
        .map(|(&(id, attempt, max_attempts), result)| {
            outcome(settings, id, attempt, max_attempts, result)
        })
        .collect()
}

/// A runner's results, one for each job however many it gave: a job it left out is retried.
fn one_each(results: Vec<Result<(), JobFailure>>) -> impl Iterator<Item = Result<(), JobFailure>> {
    results.into_iter().chain(std::iter::repeat_with(|| {
        Err(JobFailure::Retry(
            "the runner gave no result for this job".into(),
        ))
    }))
}

/// What becomes of a job after its run's `result`.
fn outcome(
    settings: &JobsSettings,
    id: Uuid,
    attempt: i32,
    max_attempts: i32,
    result: Result<(), JobFailure>,
) -> Outcome {
    if let Err(e) = &result {
        tracing::warn!(job = %id, error = ?e, "job did not succeed");
    }
    match result {
        Ok(()) => Outcome::Succeeded,
        Err(JobFailure::Deferred(after, error)) => Outcome::Later {
            after,
            error,
            spend: false,
        },
        Err(JobFailure::Retry(error)) if attempt < max_attempts => Outcome::Later {
            after: backoff(settings, attempt),
            error,
            spend: true,
        },
        Err(JobFailure::Retry(error)) | Err(JobFailure::Permanent(error)) => {
            Outcome::Dead { error }
        }
    }
}

/// Exponential backoff with full jitter: a uniform delay up to `base * 2^(attempt - 1)`, capped.
pub fn backoff(settings: &JobsSettings, attempt: i32) -> Duration {
    let exp = settings
        .backoff_base
        .saturating_mul(1u32 << attempt.clamp(1, 20).saturating_sub(1))
        .min(settings.backoff_max);
    exp.mul_f64(rand::random::<f64>())
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
                ctx.address(),
                rx,
                self.settings.poll_interval,
                self.board.clone(),
            ));
        }
        self.claim_all(ctx);
    }
}

/// Keeps a `LISTEN` connection: wakes the dispatcher on another instance's notification, and
/// sends this instance's own when asked. Reconnects after a poll interval when it breaks;
/// ends when the dispatcher stops.
async fn listen(
    pg: tokio_postgres::Config,
    instance: String,
    addr: Addr<Jobs>,
    mut asks: tokio::sync::mpsc::Receiver<String>,
    retry: Duration,
    board: JobsBoard,
) {
    use futures_util::StreamExt;
    while addr.connected() {
        let Ok((client, mut connection)) = pg.connect(tokio_postgres::NoTls).await else {
            tokio::time::sleep(retry).await;
            continue;
        };
        let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
        let me = instance.clone();
        let driver = actix_rt::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = message {
                    // "<instance> <queue>,<queue>": another instance's commit wrote to those.
                    let (from, queues) = n.payload().split_once(' ').unwrap_or((n.payload(), ""));
                    if from == me {
                        continue;
                    }
                    let queues = queues
                        .split(',')
                        .filter(|q| !q.is_empty())
                        .map(str::to_owned)
                        .collect();
                    if tx.send(queues).is_err() {
                        break;
                    }
                }
            }
        });
        if client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .is_ok()
        {
            board.listening.store(true, Relaxed);
            // Jobs written while nobody listened are found now rather than at the next poll.
            addr.do_send(Wake::default());
            loop {
                tokio::select! {
                    note = notes.recv() => match note {
                        Some(queues) => {
                            board.notifications.fetch_add(1, Relaxed);
                            addr.do_send(Wake { queues, broadcast: false });
                        }
                        None => break,
                    },
                    ask = asks.recv() => match ask {
                        // Queue names are the kinds' own (letters and underscores).
                        Some(queues) => {
                            let sql = format!("NOTIFY {CHANNEL}, '{instance} {queues}'");
                            if client.batch_execute(&sql).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
        }
        board.listening.store(false, Relaxed);
        driver.abort();
        if asks.is_closed() {
            return;
        }
        tokio::time::sleep(retry).await;
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

    fn handle(&mut self, _: Stop, _ctx: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        self.listener = None;
        let (db, settings, board) = (
            self.db.clone(),
            Arc::clone(&self.settings),
            self.board.clone(),
        );
        Box::pin(
            async move {
                let until = Instant::now() + settings.drain;
                let running = || -> u64 { board.snapshot().iter().map(|q| q.running_here).sum() };
                while running() > 0 && Instant::now() < until {
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

// ---- the commands

/// The jobs of queue `$1` due by `$by` (at most `$2`), oldest first, none behind an unfinished
/// job of its ordering key, locked: `SELECT <columns> FROM jobs j ...`.
macro_rules! due {
    ($columns:literal, $by:literal) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM jobs j
    WHERE j.queue = $1 AND j.status IN ('queued', 'failed') AND j.run_at <= ",
            $by,
            "
      AND (j.ordering_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM jobs e
          WHERE e.queue = j.queue AND e.ordering_key = j.ordering_key
            AND e.status IN ('queued', 'running', 'failed')
            AND (e.created_at, e.id) < (j.created_at, j.id)))
    ORDER BY j.run_at, j.id
    LIMIT $2
    FOR UPDATE OF j SKIP LOCKED"
        )
    };
}
pub(crate) use due;

/// The due jobs ([`due`]), then the claim's `UPDATE ... FROM due`, and what a runner sees of
/// them.
macro_rules! claim {
    ($update:literal) => {
        concat!(
            "WITH due AS (",
            due!("j.id", "now()"),
            ")\n",
            $update,
            "
FROM due WHERE jobs.id = due.id
RETURNING jobs.id, jobs.merchant_id, jobs.queue, jobs.kind, jobs.payload, jobs.attempts,
    jobs.max_attempts, jobs.created_at"
        )
    };
}

const CLAIM: &str = claim!(
    "UPDATE jobs SET status = 'running', attempts = jobs.attempts + 1,
    locked_until = now() + $3 * interval '1 millisecond', locked_by = $4, updated_at = now(),
    started_at = clock_timestamp()"
);

/// Every claim's settings: see [`Claim`].
fn claim_settings() -> String {
    format!("{ASYNC_COMMIT}; {PLANNED_BY_KEY}; SET LOCAL enable_sort = off")
}

fn claimed(r: &tokio_postgres::Row) -> ClaimedJob {
    ClaimedJob {
        id: r.get(0),
        merchant_id: r.get(1),
        queue: r.get(2),
        kind: r.get(3),
        payload: r.get(4),
        attempt: r.get(5),
        max_attempts: r.get(6),
        created_at: r.get(7),
    }
}

struct Claim {
    queue: String,
    limit: i64,
    lease: Duration,
    instance: String,
}

fn millis(d: Duration) -> f64 {
    d.as_millis() as f64
}

impl DbCommand for Claim {
    type Output = Vec<ClaimedJob>;

    /// Committed without waiting for the flush, as [`Record`] is: a claim lost in a crash
    /// only makes the job claimable again. Planned on the due index whatever the statistics
    /// say: a queue table analysed while empty got a plan that scanned and sorted the whole
    /// queue on every claim once a burst filled it (commit-to-start p50 6.5 s in bench run
    /// 20261201-215956, until autoanalyze caught up). Planned for each claim with its own
    /// limit, and joined to the rows it updates by their key: one run in about ten fell behind
    /// from its start (runs 20261202-032507 and -042058: one claim at a time, each 200-500 ms,
    /// no snapshot held, until autovacuum), the prepared statement's cached generic plan made
    /// while the table was nearly empty and the limit unknown.
    async fn run(self, conn: &mut Conn) -> Result<Vec<ClaimedJob>, DbError> {
        let tx = conn.transaction().await?;
        tx.batch_execute(&claim_settings()).await?;
        let stmt = tx.prepare_cached(CLAIM).await?;
        let rows = tx
            .query(
                &stmt,
                &[
                    &self.queue,
                    &self.limit,
                    &millis(self.lease),
                    &self.instance,
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(rows.iter().map(claimed).collect())
    }
}

/// Extends the leases of a run's jobs; how many are no longer this run's.
struct Renew {
    held: Vec<(Uuid, i32)>,
    lease: Duration,
    instance: String,
}

impl DbCommand for Renew {
    type Output = usize;

    async fn run(self, conn: &mut Conn) -> Result<usize, DbError> {
        let (ids, attempts): (Vec<Uuid>, Vec<i32>) = self.held.iter().copied().unzip();
        let n = conn
            .execute(
                "UPDATE jobs j SET locked_until = now() + $4 * interval '1 millisecond'
                 FROM unnest($1::uuid[], $3::int[]) AS h(id, attempt)
                 WHERE j.id = h.id AND j.locked_by = $2 AND j.attempts = h.attempt",
                &[&ids, &self.instance, &attempts, &millis(self.lease)],
            )
            .await?;
        Ok(self.held.len().saturating_sub(n as usize))
    }
}

#[derive(Debug, Clone)]
enum Outcome {
    Succeeded,
    Later {
        after: Duration,
        error: String,
        /// Whether this run counts as an attempt.
        spend: bool,
    },
    Dead {
        error: String,
    },
}

/// Records a batch of outcomes, each only while its run still holds the job; the ids recorded.
///
/// "Still holds" is `locked_by` (set only while a job runs) and the attempt, without
/// `status = 'running'`: that condition matches the lease index's predicate, and with statistics
/// taken before a burst the planner chose to scan that index (estimated one row) and join the
/// batch to every running job: 1.4-1.9 s per write of 1,024 outcomes while 40,000 ran (plans
/// logged by auto_explain in bench run 20261202-064159). [`Renew`] is written the same way for
/// the same reason. Planned as the claim is ([`PLANNED_BY_KEY`]): without the lease index, a
/// generic plan made while the table was small scanned the whole table for each outcome
/// instead (1.0-2.0 s a write, bench run 20261202-064606).
///
/// Committed without waiting for the WAL flush (`synchronous_commit = off`): the bookkeeping of
/// an at-least-once queue may be lost in a PostgreSQL crash, which only runs those jobs again,
/// and a flush per outcome was what bounded the dispatcher (450 no-op jobs/s, BENCHMARKS.md).
struct Record {
    instance: String,
    outcomes: Vec<(Uuid, i32, Outcome)>,
}

/// An outcome to write: the job, its `attempts` as the row has them now (the run is its own
/// only while they match), how many attempts to add, and the outcome.
struct Written {
    id: Uuid,
    attempts: i32,
    add: i32,
    outcome: Outcome,
}

impl Written {
    /// The outcome of a run whose claim counted its attempt: one it should not spend is given
    /// back.
    fn claimed(id: Uuid, attempt: i32, outcome: Outcome) -> Self {
        let add = if outcome.spends() { 0 } else { -1 };
        Self {
            id,
            attempts: attempt,
            add,
            outcome,
        }
    }

    /// The outcome of a run whose row was left as it was (a run in its claim, or one rolled
    /// back): its attempt is spent unless deferred.
    fn unchanged(job: &ClaimedJob, outcome: Outcome) -> Self {
        Self {
            id: job.id,
            attempts: job.attempt - 1,
            add: i32::from(outcome.spends()),
            outcome,
        }
    }
}

impl Outcome {
    fn spends(&self) -> bool {
        !matches!(self, Outcome::Later { spend: false, .. })
    }
}

const RECORD: &str = "UPDATE jobs j SET status = o.status, locked_by = NULL, locked_until = NULL,
    attempts = j.attempts + o.add,
    run_at = CASE WHEN o.status = 'failed' THEN now() + o.delay_ms * interval '1 millisecond' ELSE j.run_at END,
    last_error = coalesce(o.error, j.last_error),
    finished_at = CASE WHEN o.status IN ('succeeded', 'dead') THEN now() END,
    updated_at = now()
FROM unnest($1::uuid[], $2::int[], $3::text[], $4::float8[], $5::text[], $6::int[])
    AS o(id, attempts, status, delay_ms, error, add)
WHERE j.id = o.id AND j.locked_by IS NOT DISTINCT FROM $7 AND j.attempts = o.attempts
RETURNING j.id";

/// Writes `outcomes` in `tx`, each only while the row is as the run left it: held by
/// `held_by` (`None`: by no one, a run in its claim) with the attempts it expects. The ids
/// written.
async fn record_in(
    tx: &deadpool_postgres::Transaction<'_>,
    held_by: Option<&str>,
    outcomes: Vec<Written>,
) -> Result<std::collections::HashSet<Uuid>, DbError> {
    let n = outcomes.len();
    let (mut ids, mut attempts, mut statuses) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut delays, mut errors, mut adds) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for w in outcomes {
        ids.push(w.id);
        attempts.push(w.attempts);
        adds.push(w.add);
        let (status, delay, error) = match w.outcome {
            Outcome::Succeeded => ("succeeded", Duration::ZERO, None),
            Outcome::Later { after, error, .. } => ("failed", after, Some(error)),
            Outcome::Dead { error } => ("dead", Duration::ZERO, Some(error)),
        };
        statuses.push(status);
        delays.push(millis(delay));
        errors.push(error);
    }
    let stmt = tx.prepare_cached(RECORD).await?;
    let rows = tx
        .query(
            &stmt,
            &[
                &ids, &attempts, &statuses, &delays, &errors, &adds, &held_by,
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

impl DbCommand for Record {
    type Output = std::collections::HashSet<Uuid>;

    async fn run(self, conn: &mut Conn) -> Result<Self::Output, DbError> {
        let outcomes = self
            .outcomes
            .into_iter()
            .map(|(id, attempt, outcome)| Written::claimed(id, attempt, outcome))
            .collect();
        let tx = conn.transaction().await?;
        tx.batch_execute(&format!("{ASYNC_COMMIT}; {PLANNED_BY_KEY}"))
            .await?;
        let written = record_in(&tx, Some(&self.instance), outcomes).await?;
        tx.commit().await?;
        Ok(written)
    }
}

/// Puts back the jobs whose lease ran out (their instance crashed or froze).
struct Reap;

impl DbCommand for Reap {
    type Output = u64;

    async fn run(self, conn: &mut Conn) -> Result<u64, DbError> {
        Ok(conn
            .execute(
                "UPDATE jobs SET status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'failed' END,
                    finished_at = CASE WHEN attempts >= max_attempts THEN now() END,
                    locked_by = NULL, locked_until = NULL, run_at = now(),
                    last_error = 'lease ran out: the instance running it stopped', updated_at = now()
                 WHERE status = 'running' AND locked_until < now()",
                &[],
            )
            .await?)
    }
}

/// Gives back the jobs this instance holds, without spending their attempt.
struct Release {
    instance: String,
}

impl DbCommand for Release {
    type Output = u64;

    async fn run(self, conn: &mut Conn) -> Result<u64, DbError> {
        Ok(conn
            .execute(
                "UPDATE jobs SET status = 'queued', attempts = attempts - 1, locked_by = NULL,
                    locked_until = NULL, run_at = now(), updated_at = now()
                 WHERE status = 'running' AND locked_by = $1",
                &[&self.instance],
            )
            .await?)
    }
}

/// Queue health from the table: what waits, runs, failed and died, in every instance together.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct QueueHealth {
    pub queue: String,
    /// Due or scheduled, not running (queued, or failed awaiting a retry).
    pub depth: i64,
    pub running: i64,
    pub failed: i64,
    pub dead: i64,
    /// Seconds the oldest due job has waited (0: none due).
    pub oldest_due_secs: f64,
}

/// Reads every queue's health (the probe runs it on its own connection).
pub async fn queue_health(
    client: &tokio_postgres::Client,
) -> Result<Vec<QueueHealth>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT queue,
                count(*) FILTER (WHERE status IN ('queued', 'failed')),
                count(*) FILTER (WHERE status = 'running'),
                count(*) FILTER (WHERE status = 'failed'),
                count(*) FILTER (WHERE status = 'dead'),
                coalesce(extract(epoch FROM now() - min(run_at)
                    FILTER (WHERE status IN ('queued', 'failed') AND run_at <= now())), 0)::float8
             FROM jobs WHERE status <> 'succeeded' GROUP BY queue ORDER BY queue",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| QueueHealth {
            queue: r.get(0),
            depth: r.get(1),
            running: r.get(2),
            failed: r.get(3),
            dead: r.get(4),
            oldest_due_secs: r.get(5),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> JobsSettings {
        JobsSettings {
            instance: "t".into(),
            queues: BTreeMap::new(),
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            session_idle_limit: None,
            session_statement_limit: None,
            drain: Duration::from_secs(1),
            listen: None,
            busy: None,
        }
    }

    #[test]
    fn a_commit_wakes_a_dispatched_queue_unless_its_next_claim_is_already_scheduled() {
        let board = JobsBoard::new(&BTreeMap::from([("email".to_owned(), 1)]));
        assert!(board.wake_needed("email"));
        assert!(!board.wake_needed("reports"), "not dispatched here");
        let armed = |on: bool| {
            let c = board.counters("email").expect("dispatched");
            c.armed.store(on, SeqCst);
        };
        armed(true);
        assert!(!board.wake_needed("email"));
        armed(false);
        assert!(board.wake_needed("email"));
    }

    #[test]
    fn backoff_is_jittered_under_an_exponential_bound_that_stops_at_the_cap() {
        let s = settings();
        for attempt in 1..=30 {
            let bound = Duration::from_millis(100)
                .saturating_mul(1 << (attempt.min(20) - 1))
                .min(s.backoff_max);
            let delays: Vec<Duration> = (0..200).map(|_| backoff(&s, attempt)).collect();
            assert!(delays.iter().all(|d| *d <= bound), "attempt {attempt}");
            // Full jitter: the delays spread over the range rather than sitting at its top.
            assert!(delays.iter().any(|d| *d < bound / 2), "attempt {attempt}");
        }
    }
}
