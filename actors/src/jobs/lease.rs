//! The leases of jobs run apart: renewed while their run lasts ([`execute`]), put back when they
//! ran out because their instance crashed or froze ([`Reap`]), given back at shutdown
//! ([`Release`]).

use super::claim::millis;
use super::outcome::{one_each, outcome, Outcome};
use super::runner::{ClaimedJob, JobFailure, JobRunner};
use super::settings::JobsSettings;
use crate::admission::Handle;
use crate::db::{Conn, Db, DbCommand, DbError};
use futures_util::future::LocalBoxFuture;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// How long the dispatcher waits for one of its own commands (a claim, a renewal, a record).
pub(super) const DB_WAIT: Duration = Duration::from_secs(10);

/// Runs one job or a batch, renewing their leases meanwhile; what should become of each.
pub(super) async fn execute(
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
                    if let Ok(renewed) = db.run_within(renew, DB_WAIT).await {
                        let lost = held.len().saturating_sub(renewed.len());
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

/// Extends the leases of a run's jobs (held: each job and its attempt); the jobs still this
/// run's.
pub(super) struct Renew {
    pub(super) held: Vec<(Uuid, i32)>,
    pub(super) lease: Duration,
    pub(super) instance: String,
}

impl DbCommand for Renew {
    type Output = HashSet<Uuid>;

    async fn run(self, conn: &mut Conn) -> Result<HashSet<Uuid>, DbError> {
        let (ids, attempts): (Vec<Uuid>, Vec<i32>) = self.held.iter().copied().unzip();
        let rows = conn
            .query(
                "UPDATE jobs j SET locked_until = now() + $4 * interval '1 millisecond'
                 FROM unnest($1::uuid[], $3::int[]) AS h(id, attempt)
                 WHERE j.id = h.id AND j.locked_by = $2 AND j.attempts = h.attempt
                 RETURNING j.id",
                &[&ids, &self.instance, &attempts, &millis(self.lease)],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

/// Puts back the jobs whose lease ran out (their instance crashed or froze).
pub(super) struct Reap;

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
pub(super) struct Release {
    pub(super) instance: String,
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
