//! Claiming due jobs under a lease: the due jobs of a queue (oldest first, none behind an
//! unfinished job of its ordering key, `FOR UPDATE SKIP LOCKED`), the settings every statement on
//! the queue table runs with, and the [`Claim`] command.

use super::runner::ClaimedJob;
use crate::db::{Conn, DbCommand, DbError};
use std::time::Duration;

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
pub(super) const PLANNED_BY_KEY: &str = "SET LOCAL plan_cache_mode = force_custom_plan; \
    SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; \
    SET LOCAL enable_mergejoin = off";

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
    jobs.max_attempts, jobs.created_at, jobs.trace_context"
        )
    };
}

const CLAIM: &str = claim!(
    "UPDATE jobs SET status = 'running', attempts = jobs.attempts + 1,
    locked_until = now() + $3 * interval '1 millisecond', locked_by = $4, updated_at = now(),
    started_at = clock_timestamp()"
);

/// Every claim's settings: see [`Claim`].
pub(super) fn claim_settings() -> String {
    format!("{ASYNC_COMMIT}; {PLANNED_BY_KEY}; SET LOCAL enable_sort = off")
}

pub(super) fn claimed(r: &tokio_postgres::Row) -> ClaimedJob {
    ClaimedJob {
        id: r.get(0),
        merchant_id: r.get(1),
        queue: r.get(2),
        kind: r.get(3),
        payload: r.get(4),
        attempt: r.get(5),
        max_attempts: r.get(6),
        created_at: r.get(7),
        trace_context: r.get(8),
    }
}

pub(super) struct Claim {
    pub(super) queue: String,
    pub(super) limit: i64,
    pub(super) lease: Duration,
    pub(super) instance: String,
}

pub(super) fn millis(d: Duration) -> f64 {
    d.as_millis() as f64
}

impl DbCommand for Claim {
    type Output = Vec<ClaimedJob>;

    /// Committed without waiting for the flush, as an outcome's record is: a claim lost in a crash
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
