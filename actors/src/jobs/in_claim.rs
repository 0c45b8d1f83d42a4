//! Jobs run in their claim: one transaction locks a batch of a kind's due jobs with
//! `FOR UPDATE SKIP LOCKED`, does their work, deletes the jobs that succeeded (a failure is
//! written back as any other) and commits. For kinds whose work is writes to this database
//! (analytics, audit), and only those: an effect outside it (a mail) made here would stay made
//! when the transaction rolls back (a drain, a session PostgreSQL ended, a killed instance),
//! with no attempt counted, and be made again (such kinds run apart: `effects`).
//!
//! Why: a job run apart is three transactions (claim, work, outcome) and two new versions of its
//! row, each with entries in the job table's indexes. Those writes land on the same hot pages as
//! the checkouts' own outbox inserts, and with the dispatcher running they cost a checkout as
//! much as its own statements did (`make bench SCENARIO=jobs`, BENCHMARKS.md "Durable jobs").
//! In its claim a job is one transaction, its row is locked and deleted rather than rewritten
//! (no new version, no index entry), and its database work is done exactly once: a run that
//! fails or whose instance dies leaves nothing behind, neither its writes nor its outcome. What
//! such a job did is its record (the audit entry, the `analytics_applied` row); its id is never
//! given to a client.
//!
//! The lease of such a run is its transaction: its row locks keep other claims off the jobs,
//! the connection's end (a killed instance) rolls it back, and a frozen instance's transaction
//! is ended by PostgreSQL once idle for the lease (`idle_in_transaction_session_timeout`, or the
//! session's own if shorter); a statement may run no longer either. A run waiting on something
//! else (the blocking pool) renews it with a statement every third of that limit. Such a job is never
//! seen `running`: it is `queued` until the commit that removes it. One run at a time per queue
//! and instance, each holding a pooled connection while it runs: the batch is the unit of work,
//! and more runs at once would only contend for the same rows.

use super::claim::{claim_settings, claimed, due, millis};
use super::outcome::{one_each, outcome, record_in, Outcome, Written};
use super::runner::{ClaimedJob, JobFailure, Runners};
use super::settings::JobsSettings;
use crate::db::{commit, Conn, DbCommand, DbError};
use deadpool_postgres::Transaction;
use std::sync::Arc;

/// Claims, runs and records up to `limit` jobs of `queue` in one transaction; the outcome of
/// each job the run took.
pub(super) struct RunInClaim {
    pub(super) queue: String,
    pub(super) limit: i64,
    /// Only jobs due this long ago.
    pub(super) settled: std::time::Duration,
    pub(super) runners: Arc<Runners>,
    pub(super) settings: Arc<JobsSettings>,
}

/// Takes the jobs due `$3` milliseconds ago by locking them (no new row version); the run's
/// attempt is the row's attempts plus one, written only if the job fails.
const TAKE: &str = due!(
    "j.id, j.merchant_id, j.queue, j.kind, j.payload, j.attempts + 1, j.max_attempts, j.created_at,
    j.trace_context",
    "now() - $3 * interval '1 millisecond'"
);

/// While the foreground is busy, a run in its claim takes only jobs due this long ago. The
/// newest jobs sit on the pages the checkouts are inserting into (the right-hand edge of the job
/// table's time-ordered indexes, its last heap pages): a claim that reads and locks them there
/// made each checkout's own outbox insert half as slow again (0.83 → 1.25 ms a checkout,
/// `make bench SCENARIO=jobs`, run 20261202-150012). Half a second back, the claim works on pages
/// the inserts have left.
pub(super) const SETTLE_WHILE_BUSY: std::time::Duration = std::time::Duration::from_millis(500);

/// A job done in its claim leaves the queue in the transaction that did its work: that
/// transaction's writes (an audit row, an `analytics_applied` row) are its record, and its id
/// is never handed to a client. Deleting writes no new row version and no index entry; marking
/// it `succeeded` wrote both, on the pages where the checkouts insert their jobs.
const DONE: &str = "DELETE FROM jobs WHERE id = ANY($1)";

impl DbCommand for RunInClaim {
    type Output = Vec<Outcome>;

    async fn run(self, conn: &mut Conn) -> Result<Vec<Outcome>, DbError> {
        let caller = conn.caller().clone();
        // The lease, unless the session's own limits are shorter.
        let within = |limit: Option<std::time::Duration>| {
            limit.map_or(self.settings.lease, |l| l.min(self.settings.lease))
        };
        let idle = within(self.settings.session_idle_limit);
        let statement = within(self.settings.session_statement_limit);
        let tx = conn.transaction().await?;
        tx.batch_execute(&format!(
            "{}; SET LOCAL idle_in_transaction_session_timeout = {}; SET LOCAL statement_timeout = {}",
            claim_settings(),
            idle.as_millis().max(1),
            statement.as_millis().max(1)
        ))
        .await?;
        let stmt = tx.prepare_cached(TAKE).await?;
        let mut jobs: Vec<ClaimedJob> = tx
            .query(&stmt, &[&self.queue, &self.limit, &millis(self.settled)])
            .await?
            .iter()
            .map(claimed)
            .collect();
        if jobs.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        // Each kind's jobs side by side, taken in place: the batch is large (`limit`).
        jobs.sort_by(|a, b| a.kind.cmp(&b.kind));
        let mut results: Vec<(&ClaimedJob, Result<(), JobFailure>)> = Vec::new();
        let mut undone = None;
        for group in jobs.chunk_by(|a, b| a.kind == b.kind) {
            let kind = &group[0].kind;
            let Some(runner) = self.runners.get(kind).and_then(|(r, _)| r.in_claim()) else {
                let failure = JobFailure::Permanent(format!("no runner for kind {kind}"));
                results.extend(group.iter().map(|j| (j, Err(failure.clone()))));
                continue;
            };
            let applied = tokio::select! {
                applied = runner.apply(&tx, group) => applied,
                () = keep_alive(&tx, idle) => unreachable!("keeping alive never ends"),
            };
            match applied {
                Ok(done) => results.extend(group.iter().zip(one_each(done))),
                Err(e) => {
                    undone = Some(e);
                    break;
                }
            }
        }
        let outcome_of = |job: &ClaimedJob, result| {
            outcome(
                &self.settings,
                job.id,
                job.attempt,
                job.max_attempts,
                result,
            )
        };
        if let Some(e) = undone {
            // Nothing of the run stays, its claim included: each job spends the attempt it was
            // given, in a transaction of its own, unless another run took it meanwhile.
            tx.rollback().await?;
            let error = JobFailure::Retry(format!("database: {e}"));
            let outcomes: Vec<Outcome> = jobs
                .iter()
                .map(|j| outcome_of(j, Err(error.clone())))
                .collect();
            let written = jobs
                .iter()
                .zip(&outcomes)
                .map(|(j, o)| Written::unchanged(j, o.clone()))
                .collect();
            let tx = conn.transaction().await?;
            tx.batch_execute(&claim_settings()).await?;
            record_in(&tx, None, written).await?;
            tx.commit().await?;
            return Ok(outcomes);
        }
        let (mut outcomes, mut done, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        for (job, result) in results {
            let o = outcome_of(job, result);
            match o {
                Outcome::Succeeded => done.push(job.id),
                _ => failed.push(Written::unchanged(job, o.clone())),
            }
            outcomes.push(o);
        }
        if !done.is_empty() {
            let stmt = tx.prepare_cached(DONE).await?;
            tx.execute(&stmt, &[&done]).await?;
        }
        if !failed.is_empty() {
            record_in(&tx, None, failed).await?;
        }
        commit(tx, &caller).await?;
        Ok(outcomes)
    }
}

/// How long the dispatcher waits for a run in its claim. The run lasts as long as its work (a
/// batch's statements, behind the requests' on a busy pool); past this its caller is gone and
/// the run rolls back rather than commit, which undoes its work and its claim alike.
pub(super) const IN_CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Renews the lease of a run whose work waits on something else (the blocking pool): the
/// transaction is idle meanwhile, and PostgreSQL would end it after `idle` of that. A frozen
/// instance renews nothing.
async fn keep_alive(tx: &Transaction<'_>, idle: std::time::Duration) {
    let mut every = tokio::time::interval(idle / 3);
    every.tick().await;
    loop {
        every.tick().await;
        let _ = tx.batch_execute("SELECT 1").await;
    }
}
