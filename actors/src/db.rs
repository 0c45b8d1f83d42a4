//! `Db`: owns the deadpool-postgres pool; [`DbProbe`]: owns one dedicated connection for probes.
//!
//! Messages of `Db` (all through [`crate::Handle`], so a full mailbox is refused at once):
//! - [`Exec<C>`] for any [`DbCommand`] `C` → `Result<C::Output, DbError>`: takes a slot and a
//!   pooled connection (statement cache per connection) and runs the command on a [`Conn`].
//! - [`crate::Stop`]: closes the pool and stops.
//!
//! Deadlines: every command carries its caller's [`Caller`]. Work whose caller is gone or whose
//! deadline passed while it waited for a slot or a connection is skipped (counted as expired).
//! A transaction gets only the time left ([`Conn::begin`] sets `statement_timeout` and
//! `lock_timeout` locally) and commits only through [`commit`], which asks the caller for the
//! point of no return first: a caller that gave up gets a rollback, never a later commit; once
//! COMMIT is sent, the caller waits for its outcome.
//!
//! Commands run concurrently, each as its own task on the actor's thread, up to `max_inflight`;
//! past that up to `max_waiting` more wait for a slot in arrival order, and any further command
//! is refused at once with `DbError::Overloaded` (counted as refused), so nothing queues without
//! bound on the pool. The actor never holds its mailbox: in actix a `ctx.wait` future is polled
//! before the actor's other futures, and under steady load those futures, which deliver the
//! replies of finished commands, would starve. Mailbox capacity and restart policy come from the
//! [`crate::ActorSpec`] it is started with.
//!
//! A panic in a command is caught inside its task: the connection it held (perhaps mid-transaction)
//! is detached from the pool and closed, the caller gets `DbError::Internal`, and supervision
//! counts a restart. The pool itself is left alone: the commands running or waiting beside the
//! panic keep their slots and connections.
//!
//! Paths that bypass the mailbox: pool usage for metrics is read from [`DbGauge`] (the pool's
//! own counters and the slot semaphore: atomics, no message), and readiness pings go to
//! [`DbProbe`], a second actor with its own mailbox and connection, so neither ever queues
//! behind traffic: a busy instance must not report itself unready.

use crate::admission::{serve_call, CallError, Caller, Envelope, Handle, Reply, Request};
use crate::breaker::{Call, Circuit};
use crate::stats::ActorStats;
use crate::supervision::{Resilient, Stop, Supervision};
use actix::fut::WrapFuture;
use actix::{Actor, Context, Handler};
use deadpool_postgres::{
    Client, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, Transaction,
};
use futures_util::FutureExt;
use serde::Serialize;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// A typed unit of database work, run on one pooled connection within its caller's deadline.
pub trait DbCommand: Send + 'static {
    type Output: Send + 'static;
    fn run(self, conn: &mut Conn) -> impl Future<Output = Result<Self::Output, DbError>>;
}

/// Runs a [`DbCommand`] on the `Db` actor.
pub struct Exec<C>(pub C);

impl<C: DbCommand> Request for Exec<C> {
    type Reply = Result<C::Output, DbError>;
}

/// A pooled connection lent to one command, with the caller it works for.
pub struct Conn {
    client: Client,
    caller: Caller,
}

impl Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Conn {
    /// A connection taken outside `Db` (the benchmarks' actor-free ceiling).
    pub fn new(client: Client, caller: Caller) -> Self {
        Self { client, caller }
    }

    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Begins a transaction that may run only for the time its caller has left: statements and
    /// lock waits past the deadline fail with [`DbError::Timeout`] and roll it back.
    pub async fn begin(&mut self) -> Result<Transaction<'_>, DbError> {
        let left = self.caller.remaining().as_millis();
        if left == 0 || !self.caller.is_live() {
            return Err(DbError::Timeout);
        }
        let tx = self.client.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {left}; SET LOCAL lock_timeout = {left}"
        ))
        .await?;
        Ok(tx)
    }
}

/// Commits `tx` if its caller still waits (the point of no return), else rolls it back and
/// reports [`DbError::Timeout`]. Once COMMIT is sent its outcome is what the caller hears.
pub async fn commit(tx: Transaction<'_>, caller: &Caller) -> Result<(), DbError> {
    if !caller.commit() {
        let _ = tx.rollback().await;
        return Err(DbError::Timeout);
    }
    tx.commit().await.map_err(DbError::from)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstraintKind {
    Unique,
    ForeignKey,
    Check,
    NotNull,
    Exclusion,
}

/// Database failures, typed so the HTTP layer maps them without reading text.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database timeout")]
    Timeout,
    #[error("database actor overloaded")]
    Overloaded,
    /// PostgreSQL's circuit is open: nothing was sent.
    #[error("database circuit open for {retry_after:?} more")]
    CircuitOpen { retry_after: Duration },
    #[error("constraint {name} violated")]
    Constraint { name: String, kind: ConstraintKind },
    /// Serialization failure or deadlock: safe to retry the whole transaction.
    #[error("transaction conflict: {0}")]
    Conflict(String),
    /// The server refused a value the client sent (text it cannot store, such as a NUL byte).
    #[error("value refused by the database: {0}")]
    InvalidInput(String),
    #[error("database error: {0}")]
    Other(String),
    #[error("database command panicked")]
    Internal,
}

impl DbError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, DbError::Conflict(_))
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            // No server error: either the connection broke or could not be made, or the
            // client refused a value (a type mismatch: a bug, not an outage).
            let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
            return if e.is_closed() || io || e.to_string().starts_with("error connecting") {
                DbError::Unavailable(e.to_string())
            } else {
                DbError::Other(e.to_string())
            };
        };
        let code = db.code();
        let constraint = |kind| DbError::Constraint {
            name: db.constraint().unwrap_or_default().to_owned(),
            kind,
        };
        if *code == SqlState::UNIQUE_VIOLATION {
            constraint(ConstraintKind::Unique)
        } else if *code == SqlState::FOREIGN_KEY_VIOLATION {
            constraint(ConstraintKind::ForeignKey)
        } else if *code == SqlState::CHECK_VIOLATION {
            constraint(ConstraintKind::Check)
        } else if *code == SqlState::NOT_NULL_VIOLATION {
            constraint(ConstraintKind::NotNull)
        } else if *code == SqlState::EXCLUSION_VIOLATION {
            constraint(ConstraintKind::Exclusion)
        } else if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
        {
            DbError::Conflict(db.message().to_owned())
        } else if *code == SqlState::CHARACTER_NOT_IN_REPERTOIRE
            || *code == SqlState::UNTRANSLATABLE_CHARACTER
        {
            DbError::InvalidInput(db.message().to_owned())
        } else if *code == SqlState::QUERY_CANCELED
            || *code == SqlState::LOCK_NOT_AVAILABLE
            || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
        {
            DbError::Timeout
        } else if code.code().starts_with("08")
            || code.code().starts_with("57P")
            || *code == SqlState::TOO_MANY_CONNECTIONS
        {
            DbError::Unavailable(db.message().to_owned())
        } else {
            DbError::Other(format!("{}: {}", code.code(), db.message()))
        }
    }
}

impl From<PoolError> for DbError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => DbError::Timeout,
            PoolError::Timeout(_) => DbError::Unavailable("connecting timed out".into()),
            PoolError::Backend(e) => DbError::from(e),
            PoolError::Closed => DbError::Unavailable("pool closed".into()),
            other => DbError::Other(other.to_string()),
        }
    }
}

impl From<CallError> for DbError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Overloaded => DbError::Overloaded,
            CallError::Timeout => DbError::Timeout,
            CallError::Unavailable => DbError::Unavailable("db actor not running".into()),
            CallError::Panicked => DbError::Internal,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DbSettings {
    pub pg: tokio_postgres::Config,
    pub max_connections: usize,
    /// Commands running at once.
    pub max_inflight: usize,
    /// Commands waiting for a slot before further ones are refused.
    pub max_waiting: usize,
    pub wait_timeout: Duration,
    pub create_timeout: Duration,
    pub recycle_timeout: Duration,
}

impl DbSettings {
    fn build_pool(&self) -> Pool {
        let manager = Manager::from_config(
            self.pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // Building only fails without a runtime or with a zero size, both fixed here.
        Pool::builder(manager)
            .max_size(self.max_connections.max(1))
            .wait_timeout(Some(self.wait_timeout))
            .create_timeout(Some(self.create_timeout))
            .recycle_timeout(Some(self.recycle_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .unwrap_or_else(|e| unreachable!("pool settings are fixed: {e}"))
    }
}

/// What `Db` owns and publishes for reading without a message: the pool and the slots.
#[derive(Clone)]
pub struct DbGauge {
    pool: Pool,
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_inflight: usize,
}

impl DbGauge {
    pub fn new(settings: &DbSettings) -> Self {
        let max_inflight = settings.max_inflight.max(1);
        Self {
            pool: settings.build_pool(),
            slots: Arc::new(Semaphore::new(max_inflight)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_inflight,
        }
    }

    /// Pool usage now, for metrics: no message, no wait.
    pub fn snapshot(&self) -> PoolSnapshot {
        let status = self.pool.status();
        PoolSnapshot {
            max_size: status.max_size,
            size: status.size,
            available: status.available,
            waiting: status.waiting,
            inflight: self
                .max_inflight
                .saturating_sub(self.slots.available_permits()),
            queued: self.waiting.load(Ordering::Relaxed),
        }
    }
}

pub struct Db {
    settings: DbSettings,
    gauge: DbGauge,
    circuit: Option<Circuit>,
    slow_query: Option<Duration>,
    supervision: Supervision,
}

impl Db {
    pub fn new(settings: DbSettings, gauge: DbGauge, supervision: Supervision) -> Self {
        Self {
            settings,
            gauge,
            circuit: None,
            slow_query: None,
            supervision,
        }
    }

    /// Commands go through PostgreSQL's circuit: refused at once while it is open; a command
    /// whose connection fails, or that has no answer a second past its caller's deadline, counts
    /// as a failure. An error the server answers (a lock timeout, a constraint) is PostgreSQL
    /// working, not failing.
    pub fn with_circuit(mut self, circuit: Circuit) -> Self {
        self.circuit = Some(circuit);
        self
    }

    /// Commands that run at least this long are logged, in their caller's span (its request
    /// id), with their type.
    pub fn with_slow_query(mut self, at_least: Duration) -> Self {
        self.slow_query = Some(at_least);
        self
    }
}

/// How long past its caller's deadline a command may go unanswered before it counts against
/// PostgreSQL's circuit (the server enforces the deadline itself when it is alive).
const UNANSWERED_GRACE: Duration = Duration::from_secs(1);

/// Runs `command` as a task of its own holding `slot`, unless its caller is gone by the time a
/// connection is free. A panic inside it closes the connection it held and resumes in the
/// caller's future, where [`crate::serve`] reports it.
async fn run_in_task<C: DbCommand>(
    pool: Pool,
    command: C,
    slot: OwnedSemaphorePermit,
    caller: Caller,
    stats: Arc<ActorStats>,
    call: Option<Call>,
    slow_query: Option<Duration>,
) -> Result<C::Output, DbError> {
    let span = tracing::Span::current();
    let task = actix_rt::spawn(tracing::Instrument::instrument(
        async move {
            let _slot = slot;
            let expired = || {
                stats.expired();
                Err(DbError::Timeout)
            };
            if !caller.is_live() {
                return expired();
            }
            let client = match tokio::time::timeout_at(caller.deadline(), pool.get()).await {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => {
                    let e = DbError::from(e);
                    if let (Some(call), DbError::Unavailable(_)) = (call, &e) {
                        call.failed();
                    }
                    return Err(e);
                }
                Err(_) => return expired(),
            };
            if !caller.is_live() {
                return expired();
            }
            let unanswered_at = caller.deadline() + UNANSWERED_GRACE;
            let started = std::time::Instant::now();
            let mut conn = Conn { client, caller };
            let mut call = call;
            let outcome = {
                let work = AssertUnwindSafe(command.run(&mut conn)).catch_unwind();
                tokio::pin!(work);
                tokio::select! {
                outcome = &mut work => outcome,
                () = tokio::time::sleep_until(unanswered_at) => {
                    // No answer well past the deadline: PostgreSQL is hung or gone. Judged now,
                    // while the command itself is left to finish or fail.
                    if let Some(call) = call.take() {
                        call.failed();
                    }
                    work.await
                }
                }
            };
            if let Some(call) = call {
                call.finish(matches!(outcome, Ok(Err(DbError::Unavailable(_)))));
            }
            let took = started.elapsed();
            if slow_query.is_some_and(|slow| took >= slow) {
                tracing::warn!(
                    command = std::any::type_name::<C>(),
                    took_ms = took.as_millis() as u64,
                    "slow query"
                );
            }
            match outcome {
                Ok(result) => result,
                Err(panic) => {
                    // The connection may be mid-transaction: it leaves the pool and closes.
                    drop(Object::take(conn.client));
                    std::panic::resume_unwind(panic)
                }
            }
        },
        span,
    ));
    match task.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(DbError::Unavailable("database task cancelled".into())),
    }
}

impl Actor for Db {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.gauge.pool.close();
    }
}

impl Resilient for Db {
    fn supervision(&mut self) -> &mut Supervision {
        &mut self.supervision
    }

    /// Nothing to rebuild: the panicking command's connection was closed in its task, and the
    /// pool, shared with the commands beside it, is intact.
    fn rebuild(&mut self, _ctx: &mut Context<Self>) {}
}

impl<C: DbCommand> Handler<Envelope<Exec<C>>> for Db {
    type Result = ();

    fn handle(&mut self, envelope: Envelope<Exec<C>>, ctx: &mut Context<Self>) {
        serve_call(self, ctx, envelope, |db, Exec(command), caller, _| {
            let call = match db.circuit.as_ref().map(Circuit::try_call) {
                Some(Err(open)) => {
                    return Reply::Ready(Err(DbError::CircuitOpen {
                        retry_after: open.retry_after,
                    }))
                }
                Some(Ok(call)) => Some(call),
                None => None,
            };
            let gauge = db.gauge.clone();
            let stats = Arc::clone(db.supervision.stats());
            if let Ok(slot) = Arc::clone(&gauge.slots).try_acquire_owned() {
                let slow = db.slow_query;
                let work = run_in_task(gauge.pool, command, slot, caller, stats, call, slow);
                return Reply::Spawn(Box::pin(work.into_actor(db)));
            }
            if gauge.waiting.load(Ordering::Relaxed) >= db.settings.max_waiting {
                stats.refused();
                return Reply::Ready(Err(DbError::Overloaded));
            }
            gauge.waiting.fetch_add(1, Ordering::Relaxed);
            let slow = db.slow_query;
            let work = async move {
                let slot = tokio::time::timeout_at(
                    caller.deadline(),
                    Arc::clone(&gauge.slots).acquire_owned(),
                )
                .await;
                gauge.waiting.fetch_sub(1, Ordering::Relaxed);
                let slot = match slot {
                    Ok(slot) => slot.map_err(|_| DbError::Unavailable("db actor closed".into()))?,
                    Err(_) => {
                        stats.expired();
                        return Err(DbError::Timeout);
                    }
                };
                run_in_task(gauge.pool, command, slot, caller, stats, call, slow).await
            };
            Reply::Spawn(Box::pin(work.into_actor(db)))
        });
    }
}

/// Pool usage, for metrics and people.
#[derive(Debug, Clone, Serialize)]
pub struct PoolSnapshot {
    pub max_size: usize,
    pub size: usize,
    pub available: usize,
    pub waiting: usize,
    /// Commands holding a slot.
    pub inflight: usize,
    /// Commands waiting for a slot.
    pub queued: usize,
}

impl Handler<Stop> for Db {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        use actix::ActorContext;
        self.gauge.pool.close();
        ctx.stop();
    }
}

impl Handle<Db> {
    /// Runs `command` through admission, flattening admission failures into [`DbError`].
    pub async fn run<C: DbCommand>(&self, command: C) -> Result<C::Output, DbError> {
        self.call(Exec(command)).await?
    }

    pub async fn run_within<C: DbCommand>(
        &self,
        command: C,
        within: Duration,
    ) -> Result<C::Output, DbError> {
        self.call_within(Exec(command), within).await?
    }
}

/// `DbProbe`: owns one connection of its own, outside the pool, for readiness.
///
/// Messages: [`Ping`] → `Result<Duration, DbError>` (`SELECT 1` and its round trip). Mailbox:
/// small; only ops endpoints write to it. The connection is made on first use and again after
/// it breaks, each time within the caller's deadline. A panic (none is expected) drops the
/// connection. Pings run one at a time: a probe needs no concurrency.
pub struct DbProbe {
    pg: tokio_postgres::Config,
    client: Arc<Mutex<Option<tokio_postgres::Client>>>,
    supervision: Supervision,
}

impl DbProbe {
    pub fn new(pg: tokio_postgres::Config, supervision: Supervision) -> Self {
        Self {
            pg,
            client: Arc::new(Mutex::new(None)),
            supervision,
        }
    }
}

impl Actor for DbProbe {
    type Context = Context<Self>;
}

impl Resilient for DbProbe {
    fn supervision(&mut self) -> &mut Supervision {
        &mut self.supervision
    }

    fn rebuild(&mut self, _ctx: &mut Context<Self>) {
        self.client = Arc::new(Mutex::new(None));
    }
}

impl Handler<Stop> for DbProbe {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        use actix::ActorContext;
        ctx.stop();
    }
}

/// `SELECT 1` on the probe's own connection.
pub struct Ping;

impl Request for Ping {
    type Reply = Result<Duration, DbError>;
}

/// The probe's connection, made again when it broke, within the caller's deadline.
async fn probe_client(
    pg: &tokio_postgres::Config,
    slot: &Arc<Mutex<Option<tokio_postgres::Client>>>,
    deadline: tokio::time::Instant,
) -> Result<tokio::sync::OwnedMutexGuard<Option<tokio_postgres::Client>>, DbError> {
    let mut held = tokio::time::timeout_at(deadline, Arc::clone(slot).lock_owned())
        .await
        .map_err(|_| DbError::Timeout)?;
    if held.as_ref().is_none_or(|c| c.is_closed()) {
        let (client, connection) = tokio::time::timeout_at(deadline, pg.connect(NoTls))
            .await
            .map_err(|_| DbError::Timeout)??;
        actix_rt::spawn(async move {
            let _ = connection.await;
        });
        *held = Some(client);
    }
    Ok(held)
}

/// Runs `work` on the probe's connection within the deadline; a connection that failed or did
/// not answer in time may be dead, so the next probe makes a new one.
async fn on_probe<T>(
    pg: tokio_postgres::Config,
    slot: Arc<Mutex<Option<tokio_postgres::Client>>>,
    caller: Caller,
    work: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
) -> Result<T, DbError> {
    let deadline = caller.deadline();
    let mut held = probe_client(&pg, &slot, deadline).await?;
    let Some(client) = held.as_ref() else {
        return Err(DbError::Unavailable("no probe connection".into()));
    };
    match tokio::time::timeout_at(deadline, work(client)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            *held = None;
            Err(e.into())
        }
        Err(_) => {
            *held = None;
            Err(DbError::Timeout)
        }
    }
}

async fn ping(
    pg: tokio_postgres::Config,
    slot: Arc<Mutex<Option<tokio_postgres::Client>>>,
    caller: Caller,
) -> Result<Duration, DbError> {
    let started = tokio::time::Instant::now();
    on_probe(pg, slot, caller, async |client| {
        client.simple_query("SELECT 1").await.map(|_| ())
    })
    .await?;
    Ok(started.elapsed())
}

/// The job queues' health, on the probe's connection: ops read it without queueing behind
/// requests in `Db`.
pub struct ProbeQueues;

impl Request for ProbeQueues {
    type Reply = Result<Vec<crate::jobs::QueueHealth>, DbError>;
}

impl Handler<Envelope<ProbeQueues>> for DbProbe {
    type Result = ();

    fn handle(&mut self, envelope: Envelope<ProbeQueues>, ctx: &mut Context<Self>) {
        serve_call(self, ctx, envelope, |probe, ProbeQueues, caller, _| {
            let work = on_probe(
                probe.pg.clone(),
                Arc::clone(&probe.client),
                caller,
                async |client| crate::jobs::queue_health(client).await,
            );
            Reply::Spawn(Box::pin(work.into_actor(probe)))
        });
    }
}

impl Handler<Envelope<Ping>> for DbProbe {
    type Result = ();

    fn handle(&mut self, envelope: Envelope<Ping>, ctx: &mut Context<Self>) {
        serve_call(self, ctx, envelope, |probe, Ping, caller, _| {
            let work = ping(probe.pg.clone(), Arc::clone(&probe.client), caller);
            Reply::Spawn(Box::pin(work.into_actor(probe)))
        });
    }
}

impl Handle<DbProbe> {
    /// Pings PostgreSQL within `within`; the round trip on success.
    pub async fn ping(&self, within: Duration) -> Result<Duration, DbError> {
        self.call_within(Ping, within).await?
    }

    /// The job queues' health within `within`.
    pub async fn queues(&self, within: Duration) -> Result<Vec<crate::jobs::QueueHealth>, DbError> {
        self.call_within(ProbeQueues, within).await?
    }
}
