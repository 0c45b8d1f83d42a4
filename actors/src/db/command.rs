//! The unit of database work: a [`DbCommand`] run on a [`Conn`] (a pooled connection lent with
//! its caller), transactions bounded by the caller's time left, and [`commit`] at the point of no
//! return.

use super::error::DbError;
use crate::admission::{Caller, Request};
use deadpool_postgres::{Client, Transaction};
use std::future::Future;
use std::ops::{Deref, DerefMut};

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
