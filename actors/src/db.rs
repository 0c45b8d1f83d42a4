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
//!
//! The pieces: [`DbCommand`] and [`Conn`] (`command`), [`DbError`] (`error`), the pool and its
//! [`DbGauge`] (`pool`), [`DbProbe`] (`probe`); this file is the `Db` actor.

use crate::admission::{serve_call, Caller, Envelope, Handle, Reply};
use crate::breaker::{Call, Circuit};
use crate::crash::crashable;
use crate::stats::ActorStats;
use crate::supervision::{Resilient, Stop, Supervision};
use actix::fut::WrapFuture;
use actix::{Actor, Context, Handler};
use deadpool_postgres::{Object, Pool};
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

mod command;
mod error;
mod pool;
mod probe;

pub use command::{commit, Conn, DbCommand, Exec, Tx};
pub use error::{ConstraintKind, DbError};
pub use pool::{DbGauge, DbSettings, PoolSnapshot};
pub use probe::{DbProbe, Ping, Probe, ProbeQuery};

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
    let since_sent = std::time::Instant::now();
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
            // The command's own span, when it is traced (else nothing is recorded: the
            // current span is then its request's, whose fields are not a command's).
            let traced = crate::trace::traced().then(tracing::Span::current);
            if let Some(span) = &traced {
                span.record("wait_ms", since_sent.elapsed().as_secs_f64() * 1000.0);
            }
            let mut conn = Conn::new(client, caller);
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
            if let Some(span) = &traced {
                span.record("work_ms", took.as_secs_f64() * 1000.0);
                match &outcome {
                    Ok(Ok(output)) => {
                        if let Some(rows) = C::rows(output) {
                            span.record("db.rows", i64::try_from(rows).unwrap_or(i64::MAX));
                        }
                    }
                    Ok(Err(e)) => {
                        span.record("otel.status_code", "ERROR");
                        span.record("error", tracing::field::display(e));
                    }
                    Err(_) => {}
                }
            }
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
        serve_call(
            self,
            ctx,
            envelope,
            |db, Exec { command, sent }, caller, _| {
                if crate::trace::traced() {
                    let waited = sent.elapsed().as_secs_f64() * 1000.0;
                    tracing::Span::current().record("mailbox_ms", waited);
                }
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
                        Ok(slot) => {
                            slot.map_err(|_| DbError::Unavailable("db actor closed".into()))?
                        }
                        Err(_) => {
                            stats.expired();
                            return Err(DbError::Timeout);
                        }
                    };
                    run_in_task(gauge.pool, command, slot, caller, stats, call, slow).await
                };
                Reply::Spawn(Box::pin(work.into_actor(db)))
            },
        );
    }
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
        let span = self.command_span::<C>();
        let exec = Exec {
            command,
            sent: std::time::Instant::now(),
        };
        tracing::Instrument::instrument(self.call(exec), span).await?
    }

    pub async fn run_within<C: DbCommand>(
        &self,
        command: C,
        within: Duration,
    ) -> Result<C::Output, DbError> {
        let span = self.command_span::<C>();
        let exec = Exec {
            command,
            sent: std::time::Instant::now(),
        };
        tracing::Instrument::instrument(self.call_within(exec, within), span).await?
    }

    /// A command's span (`db <Command>`, on the actor it ran on: `db` or `db_replica_<n>`): its
    /// wait in the mailbox, its wait for a connection and its work are recorded apart; what
    /// is left of the span is its wait for a slot.
    /// Made only inside traced work ([`crate::trace::traced`]).
    fn command_span<C>(&self) -> tracing::Span {
        if !crate::trace::traced() {
            return tracing::Span::none();
        }
        let command = std::any::type_name::<C>();
        // `rampart::store::products::Get` → `products::Get`: the module says which table.
        let short = command
            .rsplitn(3, "::")
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("::");
        tracing::info_span!(
            target: crate::trace::TARGET,
            "db",
            otel.name = %format_args!("db {short}"),
            db.command = command,
            db.actor = self.stats().name(),
            mailbox_ms = tracing::field::Empty,
            wait_ms = tracing::field::Empty,
            db.rows = tracing::field::Empty,
            work_ms = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            error = tracing::field::Empty,
        )
    }
}

crashable!(Db);
