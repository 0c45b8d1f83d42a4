//! What a job kind provides: a [`JobRunner`] that runs its claimed jobs (one, or a batch), or a
//! [`ClaimRunner`] that does their work inside the transaction that claims them, and the one list
//! of them ([`Runners`]).

use crate::db::DbError;
use deadpool_postgres::Transaction;
use futures_util::future::LocalBoxFuture;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use uuid::Uuid;

/// One claimed job, as a runner sees it.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: Uuid,
    pub merchant_id: Option<Uuid>,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    /// This run's attempt, from 1.
    pub attempt: i32,
    pub max_attempts: i32,
    pub created_at: SystemTime,
    /// The `traceparent` of the request that enqueued it (traces exported), for its run's span.
    pub trace_context: Option<String>,
}

/// Why a run did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobFailure {
    /// Try again after backoff (dead once the attempts are spent).
    Retry(String),
    /// Nothing a retry can change (a refused destination, a malformed payload): dead now.
    Permanent(String),
    /// Not tried (the destination's circuit is open): again after the time given, no attempt spent.
    Deferred(Duration, String),
}

/// One job's external effect (a mail), prepared with its batch by [`JobRunner::effects`].
pub enum Effect {
    /// Settled while preparing: a malformed payload, a missing order, or an effect as cheap and
    /// harmless to repeat as a local file written whole. Recorded with the others settled.
    Settled(Result<(), JobFailure>),
    /// To be made outside any transaction, after the previous job's outcome is recorded; bounded
    /// by the runner (past its bound, a failure that spends the attempt).
    Pending(LocalBoxFuture<'static, Result<(), JobFailure>>),
}

/// Runs the jobs of one kind. Runs may repeat: a runner must be idempotent.
pub trait JobRunner: Send + Sync + 'static {
    fn run(&self, job: ClaimedJob) -> LocalBoxFuture<'static, Result<(), JobFailure>>;

    /// How many jobs of this kind one run may take at once (one place of its queue).
    fn batch(&self) -> usize {
        1
    }

    /// Set for a kind that runs inside the transaction that claims its jobs ([`super::in_claim`]).
    fn in_claim(&self) -> Option<&dyn ClaimRunner> {
        None
    }

    /// Set for a kind whose work is one external effect per job (a mail): prepares a batch's
    /// effects, one per job in order (what they share read once). The dispatcher makes them one
    /// at a time under the jobs' committed lease, records each outcome before the next starts
    /// (after a crash at most the effect in flight is made again), and starts none once the
    /// instance stops or the lease is no longer surely held (the rest are handed back).
    /// `None`: the jobs run through [`JobRunner::run`] and [`JobRunner::run_batch`].
    fn effects(&self, _jobs: &[ClaimedJob]) -> Option<LocalBoxFuture<'static, Vec<Effect>>> {
        None
    }

    /// Runs up to [`JobRunner::batch`] jobs at once: one result per job, in order.
    fn run_batch(
        &self,
        jobs: Vec<ClaimedJob>,
    ) -> LocalBoxFuture<'static, Vec<Result<(), JobFailure>>> {
        let runs: Vec<_> = jobs.into_iter().map(|job| self.run(job)).collect();
        Box::pin(async move {
            let mut results = Vec::with_capacity(runs.len());
            for run in runs {
                results.push(run.await);
            }
            results
        })
    }
}

/// Each kind's runner and queue, by kind name.
pub type Runners = HashMap<String, (Arc<dyn JobRunner>, String)>;

/// A kind that runs in its claim: its work is done in the claiming transaction, which stays open
/// (and leased) while the work waits on anything else.
pub trait ClaimRunner: Send + Sync + 'static {
    /// The most jobs one run takes.
    fn batch(&self) -> usize;

    /// Does the jobs' work in `tx`: one result per job, in order. An error undoes the whole
    /// transaction (the run's writes and its claim); each job is then retried after backoff.
    fn apply<'a>(
        &'a self,
        tx: &'a Transaction<'_>,
        jobs: &'a [ClaimedJob],
    ) -> LocalBoxFuture<'a, Result<Vec<Result<(), JobFailure>>, DbError>>;
}

/// A [`ClaimRunner`] as a [`JobRunner`], for the one list of runners. Its queue holds no kind
/// that runs apart (`Jobs::new` refuses the mix), so the dispatcher never runs it apart.
pub struct InClaim<R>(pub R);

impl<R: ClaimRunner> JobRunner for InClaim<R> {
    fn run(&self, job: ClaimedJob) -> LocalBoxFuture<'static, Result<(), JobFailure>> {
        let kind = job.kind;
        Box::pin(std::future::ready(Err(JobFailure::Permanent(format!(
            "{kind} runs only in its claim"
        )))))
    }

    fn batch(&self) -> usize {
        self.0.batch()
    }

    fn in_claim(&self) -> Option<&dyn ClaimRunner> {
        Some(&self.0)
    }
}
