//! `Db`: owns the deadpool-postgres pool.
//!
//! Messages (all through [`crate::Handle`], so a full mailbox is refused at once):
//! - [`Exec<C>`] for any [`DbCommand`] `C` → `Result<C::Output, DbError>`: takes a pooled
//!   connection (statement cache per connection) and runs the command on it.
//! - [`PoolStatus`] → [`PoolSnapshot`]: pool size, idle, waiting, commands in flight.
//! - [`crate::Stop`]: closes the pool and stops.
//!
//! Commands run concurrently, each as its own task on the actor's thread, up to `max_inflight`;
//! past that up to `max_waiting` more wait for a slot in arrival order, and any further command
//! is refused at once with `DbError::Overloaded` (counted as refused), so nothing queues without
//! bound on the pool. The actor never holds its mailbox: in actix a `ctx.wait` future is polled
//! before the actor's other futures, and under steady load those futures, which deliver the
//! replies of finished commands, would starve. Mailbox capacity and restart policy come from
//! the [`crate::ActorSpec`] it is started with. A panic in a command is caught, the caller gets `DbError::Internal`, and the
//! pool is rebuilt from its settings (connections a panic may have left mid-transaction are
//! dropped with the old pool).

use crate::admission::{serve, CallError, Envelope, Handle, Reply, Request};
use crate::supervision::{Resilient, Stop, Supervision};
use actix::fut::WrapFuture;
use actix::{Actor, ActorContext, Context, Handler};
use deadpool_postgres::{
    Client, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime,
};
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// A typed unit of database work, run on one pooled connection.
pub trait DbCommand: Send + 'static {
    type Output: Send + 'static;
    fn run(self, client: &mut Client) -> impl Future<Output = Result<Self::Output, DbError>>;
}

/// Runs a [`DbCommand`] on the `Db` actor.
pub struct Exec<C>(pub C);

impl<C: DbCommand> Request for Exec<C> {
    type Reply = Result<C::Output, DbError>;
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
    #[error("constraint {name} violated")]
    Constraint { name: String, kind: ConstraintKind },
    /// Serialization failure or deadlock: safe to retry the whole transaction.
    #[error("transaction conflict: {0}")]
    Conflict(String),
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
        } else if *code == SqlState::QUERY_CANCELED || *code == SqlState::LOCK_NOT_AVAILABLE {
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

pub struct Db {
    settings: DbSettings,
    pool: Pool,
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    supervision: Supervision,
}

impl Db {
    pub fn new(settings: DbSettings, supervision: Supervision) -> Self {
        let pool = settings.build_pool();
        let slots = Arc::new(Semaphore::new(settings.max_inflight.max(1)));
        Self {
            settings,
            pool,
            slots,
            waiting: Arc::new(AtomicUsize::new(0)),
            supervision,
        }
    }

    fn inflight(&self) -> usize {
        self.settings
            .max_inflight
            .max(1)
            .saturating_sub(self.slots.available_permits())
    }
}

/// Runs `command` as a task of its own holding `slot`; a panic inside it resumes in the caller's
/// future, where [`serve`] catches it.
async fn run_in_task<C: DbCommand>(
    pool: Pool,
    command: C,
    slot: OwnedSemaphorePermit,
) -> Result<C::Output, DbError> {
    let task = actix_rt::spawn(async move {
        let _slot = slot;
        let mut client = pool.get().await?;
        command.run(&mut client).await
    });
    match task.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(DbError::Unavailable("database task cancelled".into())),
    }
}

impl Actor for Db {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.pool.close();
    }
}

impl Resilient for Db {
    fn supervision(&mut self) -> &mut Supervision {
        &mut self.supervision
    }

    fn rebuild(&mut self, _ctx: &mut Context<Self>) {
        self.pool.close();
        self.pool = self.settings.build_pool();
    }
}

impl<C: DbCommand> Handler<Envelope<Exec<C>>> for Db {
    type Result = ();

    fn handle(&mut self, envelope: Envelope<Exec<C>>, ctx: &mut Context<Self>) {
        serve(self, ctx, envelope, |db, Exec(command), _| {
            let pool = db.pool.clone();
            if let Ok(slot) = Arc::clone(&db.slots).try_acquire_owned() {
                return Reply::Spawn(Box::pin(run_in_task(pool, command, slot).into_actor(db)));
            }
            if db.waiting.load(Ordering::Relaxed) >= db.settings.max_waiting {
                db.supervision.stats().refused();
                return Reply::Ready(Err(DbError::Overloaded));
            }
            db.waiting.fetch_add(1, Ordering::Relaxed);
            let (slots, waiting) = (Arc::clone(&db.slots), Arc::clone(&db.waiting));
            let work = async move {
                let slot = slots.acquire_owned().await;
                waiting.fetch_sub(1, Ordering::Relaxed);
                let slot = slot.map_err(|_| DbError::Unavailable("db actor closed".into()))?;
                run_in_task(pool, command, slot).await
            };
            Reply::Spawn(Box::pin(work.into_actor(db)))
        });
    }
}

/// Pool usage, for metrics and readiness.
pub struct PoolStatus;

#[derive(Debug, Clone, Serialize)]
pub struct PoolSnapshot {
    pub max_size: usize,
    pub size: usize,
    pub available: usize,
    pub waiting: usize,
    pub inflight: usize,
}

impl Request for PoolStatus {
    type Reply = PoolSnapshot;
}

impl Handler<Envelope<PoolStatus>> for Db {
    type Result = ();

    fn handle(&mut self, envelope: Envelope<PoolStatus>, ctx: &mut Context<Self>) {
        serve(self, ctx, envelope, |db, PoolStatus, _| {
            let status = db.pool.status();
            Reply::Ready(PoolSnapshot {
                max_size: status.max_size,
                size: status.size,
                available: status.available,
                waiting: status.waiting,
                inflight: db.inflight(),
            })
        });
    }
}

impl Handler<Stop> for Db {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        self.pool.close();
        ctx.stop();
    }
}

/// `SELECT 1`: the readiness probe.
pub struct Ping;

impl DbCommand for Ping {
    type Output = ();

    async fn run(self, client: &mut Client) -> Result<(), DbError> {
        client.simple_query("SELECT 1").await?;
        Ok(())
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
