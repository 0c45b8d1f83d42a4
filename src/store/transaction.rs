//! The transaction every writing command runs in: bounded by its caller's deadline, committed
//! only while the caller waits, retried after a deadlock or serialization failure, and its
//! outcome looked up when the connection breaks as it commits (`rampart_actors::commit`).

use deadpool_postgres::Transaction;
use rampart_actors::{commit, Conn, DbError};

/// Runs `attempt` in a transaction bounded by the caller's deadline, committing only what it
/// reports as done (and only while the caller waits), and retries the whole transaction after a
/// deadlock or serialization failure while time is left.
pub async fn in_transaction<T>(
    conn: &mut Conn,
    mut attempt: impl AsyncFnMut(&Transaction<'_>) -> Result<(T, bool), DbError>,
) -> Result<T, DbError> {
    let caller = conn.caller().clone();
    let mut tries = 0;
    loop {
        tries += 1;
        let tx = conn.begin().await?;
        match attempt(&*tx).await {
            Ok((value, true)) => match commit(tx, &caller).await {
                Ok(()) => return Ok(value),
                Err(e) if e.is_retryable() && tries < 4 => continue,
                Err(e) => return Err(e),
            },
            Ok((value, false)) => {
                tx.rollback().await?;
                return Ok(value);
            }
            Err(e) if e.is_retryable() && tries < 4 => {
                let _ = tx.rollback().await;
            }
            Err(e) => return Err(e),
        }
    }
}
