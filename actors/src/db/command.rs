//! The unit of database work: a [`DbCommand`] run on a [`Conn`] (a pooled connection lent with
//! its caller), transactions bounded by the caller's time left, and [`commit`] at the point of no
//! return.

use super::error::DbError;
use crate::admission::{Caller, Request};
use deadpool_postgres::{Client, Pool, Transaction};
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::time::Duration;
use tokio_postgres::SimpleQueryMessage;

/// A typed unit of database work, run on one pooled connection within its caller's deadline.
pub trait DbCommand: Send + 'static {
    type Output: Send + 'static;
    fn run(self, conn: &mut Conn) -> impl Future<Output = Result<Self::Output, DbError>>;

    /// The rows a command's output holds, for its trace span (`None`: not a read of rows).
    fn rows(_output: &Self::Output) -> Option<usize> {
        None
    }
}

/// Runs a [`DbCommand`] on the `Db` actor, sent at `sent` (a traced command records its wait
/// in the mailbox).
pub struct Exec<C> {
    pub command: C,
    pub sent: std::time::Instant,
}

impl<C: DbCommand> Request for Exec<C> {
    type Reply = Result<C::Output, DbError>;
}

/// A pooled connection lent to one command, with the caller it works for.
pub struct Conn {
    pub(super) client: Client,
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
    /// lock waits past the deadline fail with [`DbError::Timeout`] and roll it back. Its id is
    /// taken in the same round trip, so that a commit whose answer is lost can be looked up.
    pub async fn begin(&mut self) -> Result<Tx<'_>, DbError> {
        let left = self.caller.remaining().as_millis();
        if left == 0 || !self.caller.is_live() {
            return Err(DbError::Timeout);
        }
        let pool = Client::pool(&self.client);
        let tx = self.client.transaction().await?;
        let answers = tx
            .simple_query(&format!(
                "SET LOCAL statement_timeout = {left}; SET LOCAL lock_timeout = {left}; \
                 SELECT txid_current(), pg_backend_pid()"
            ))
            .await?;
        let row = answers.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some((
                row.get(0).and_then(|v| v.parse::<i64>().ok()),
                row.get(1).and_then(|v| v.parse::<i32>().ok()),
            )),
            _ => None,
        });
        let (xid, backend) = row.unwrap_or_default();
        Ok(Tx {
            tx,
            xid,
            backend,
            pool,
        })
    }
}

/// A transaction begun by [`Conn::begin`]: its id, its session's process, and the pool to ask
/// about it on another connection if its own breaks while COMMIT is in flight.
pub struct Tx<'a> {
    tx: Transaction<'a>,
    xid: Option<i64>,
    backend: Option<i32>,
    pool: Option<Pool>,
}

impl<'a> Deref for Tx<'a> {
    type Target = Transaction<'a>;
    fn deref(&self) -> &Transaction<'a> {
        &self.tx
    }
}

/// A transaction begun elsewhere (the jobs' claims): no id was taken, so a lost COMMIT answer
/// stays an error.
impl<'a> From<Transaction<'a>> for Tx<'a> {
    fn from(tx: Transaction<'a>) -> Self {
        Tx {
            tx,
            xid: None,
            backend: None,
            pool: None,
        }
    }
}

impl Tx<'_> {
    pub async fn rollback(self) -> Result<(), DbError> {
        self.tx.rollback().await.map_err(DbError::from)
    }
}

/// Commits `tx` if its caller still waits (the point of no return), else rolls it back and
/// reports [`DbError::Timeout`]. Once COMMIT is sent its outcome is what the caller hears: when
/// the connection breaks before COMMIT's answer arrives, the transaction's status is read on
/// another connection (`txid_status`), so a write that happened is reported as done and an
/// error means nothing was written.
pub async fn commit<'a>(tx: impl Into<Tx<'a>>, caller: &Caller) -> Result<(), DbError> {
    let Tx {
        tx,
        xid,
        backend,
        pool,
    } = tx.into();
    if !caller.commit() {
        let _ = tx.rollback().await;
        return Err(DbError::Timeout);
    }
    let lost = match tx.commit().await.map_err(DbError::from) {
        Err(lost @ DbError::Unavailable(_)) => lost,
        answered => return answered,
    };
    let (Some(xid), Some(pool)) = (xid, pool) else {
        return Err(lost);
    };
    match outcome(&pool, xid, backend).await {
        Some(true) => {
            tracing::warn!(xid, "the connection broke as COMMIT was sent; it committed");
            Ok(())
        }
        Some(false) => Err(lost),
        // The database cannot be asked either (it is down): the outage is what the caller
        // hears, and a retry with its idempotency key finds the write if it happened.
        None => {
            tracing::error!(
                xid,
                "the connection broke as COMMIT was sent; outcome unknown"
            );
            Err(lost)
        }
    }
}

/// How long the outcome of a commit whose answer was lost is looked for.
const OUTCOME_WAIT: Duration = Duration::from_secs(5);

/// How long a transaction may stay in progress after its connection broke before its session
/// is ended.
const SETTLE: Duration = Duration::from_millis(200);

/// Whether transaction `xid` committed (`Some(false)`: aborted, or never reached the server),
/// asked until it is no longer in progress; `None` if that cannot be learnt within
/// [`OUTCOME_WAIT`]. On a connection of its own, made by the pool's manager outside the pool:
/// when many connections break at once (a network reset), each broken one is still checked
/// out, and a lookup queued for a pooled connection behind them would learn nothing. A session
/// still idle in the transaction after [`SETTLE`] (its connection half-open: the server has not
/// noticed the break, and its COMMIT never arrived) is ended, so the transaction rolls back and
/// its locks go; one still working on its COMMIT is left to finish.
async fn outcome(pool: &Pool, xid: i64, backend: Option<i32>) -> Option<bool> {
    let ask = async {
        let client = deadpool::managed::Manager::create(pool.manager())
            .await
            .ok()?;
        let started = tokio::time::Instant::now();
        let mut tried: Option<tokio::time::Instant> = None;
        loop {
            let row = client
                .query_one("SELECT txid_status($1)", &[&xid])
                .await
                .ok()?;
            match row.get::<_, Option<String>>(0).as_deref() {
                Some("committed") => return Some(true),
                Some("aborted") => return Some(false),
                // The old session is still finishing its COMMIT (or its rollback), or has not
                // noticed its connection is gone.
                Some(_) => {
                    // Tried again every SETTLE while the session is not idle yet.
                    let due = tried.is_none_or(|at| at.elapsed() >= SETTLE);
                    if let (Some(pid), true) = (backend, due) {
                        if started.elapsed() >= SETTLE {
                            // Only that session, only while it still holds this transaction,
                            // and only while it waits for its client: one still working on its
                            // COMMIT (a slow trigger, a synchronous standby) is left to finish.
                            let _ = client
                                .execute(
                                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                                     WHERE pid = $1 AND backend_xid::text = ($2 % 4294967296)::text
                                       AND state LIKE 'idle in transaction%'",
                                    &[&pid, &xid],
                                )
                                .await;
                            tried = Some(tokio::time::Instant::now());
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                None => return None,
            }
        }
    };
    tokio::time::timeout(OUTCOME_WAIT, ask).await.ok().flatten()
}
