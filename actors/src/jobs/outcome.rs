//! What becomes of a run: its [`Outcome`] (done, later after a backoff with full jitter, or
//! dead), and the batched write that records outcomes while the run still holds its jobs.

use super::claim::{millis, ASYNC_COMMIT, PLANNED_BY_KEY};
use super::runner::{ClaimedJob, JobFailure};
use super::settings::JobsSettings;
use crate::db::{Conn, DbCommand, DbError};
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub(super) enum Outcome {
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

impl Outcome {
    pub(super) fn spends(&self) -> bool {
        !matches!(self, Outcome::Later { spend: false, .. })
    }
}

/// A runner's results, one for each job however many it gave: a job it left out is retried.
pub(super) fn one_each(
    results: Vec<Result<(), JobFailure>>,
) -> impl Iterator<Item = Result<(), JobFailure>> {
    results.into_iter().chain(std::iter::repeat_with(|| {
        Err(JobFailure::Retry(
            "the runner gave no result for this job".into(),
        ))
    }))
}

/// What becomes of a job after its run's `result`.
pub(super) fn outcome(
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
pub(super) struct Record {
    pub(super) instance: String,
    pub(super) outcomes: Vec<(Uuid, i32, Outcome)>,
}

/// An outcome to write: the job, its `attempts` as the row has them now (the run is its own
/// only while they match), how many attempts to add, and the outcome.
pub(super) struct Written {
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
    pub(super) fn unchanged(job: &ClaimedJob, outcome: Outcome) -> Self {
        Self {
            id: job.id,
            attempts: job.attempt - 1,
            add: i32::from(outcome.spends()),
            outcome,
        }
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
pub(super) async fn record_in(
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
