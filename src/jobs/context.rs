//! What every runner shares: the handles it works with, payload fields, retries and batches.

use crate::settings::Settings;
use futures_util::future::LocalBoxFuture;
use rampart_actors::{BreakerBoard, Breakers, ClaimedJob, Db, DbError, Handle, JobFailure};
use std::sync::Arc;

/// The most analytics or audit jobs one run takes. A run costs a claim (planned for each
/// call), a transaction and a statement or two beyond its rows; while requests are busy a queue
/// claims four times a second, so this is also what a queue can take per second then (1,024:
/// more than the checkouts write, 700-900 a second in bench runs).
pub const BATCH: usize = 256;

/// What runners use: actor handles and settings, as handlers do.
#[derive(Clone)]
pub struct JobContext {
    pub db: Handle<Db>,
    pub settings: Arc<Settings>,
    pub breakers: BreakerBoard,
    pub circuits: Handle<Breakers>,
}

/// A database failure is worth a retry; the job's own attempts bound it.
pub fn retry(e: DbError) -> JobFailure {
    JobFailure::Retry(format!("database: {e}"))
}

/// A field of the payload, or a permanent failure: a malformed payload never gets better.
pub fn field<T: serde::de::DeserializeOwned>(
    job: &ClaimedJob,
    name: &str,
) -> Result<T, JobFailure> {
    job.payload
        .get(name)
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| JobFailure::Permanent(format!("payload has no valid {name}")))
}

/// A batch of `jobs` whose well-formed items (`parse`) are written together by `apply`: a
/// malformed job fails alone, the others share `apply`'s outcome.
pub fn batch_of<'a, T: 'a>(
    jobs: &[ClaimedJob],
    parse: impl Fn(&ClaimedJob) -> Result<T, JobFailure>,
    apply: impl FnOnce(Vec<T>) -> LocalBoxFuture<'a, Result<(), DbError>>,
) -> LocalBoxFuture<'a, Result<Vec<Result<(), JobFailure>>, DbError>> {
    let mut items = Vec::new();
    let results: Vec<Result<(), JobFailure>> = jobs
        .iter()
        .map(|job| parse(job).map(|item| items.push(item)))
        .collect();
    let applied = (!items.is_empty()).then(|| apply(items));
    Box::pin(async move {
        if let Some(run) = applied {
            run.await?;
        }
        Ok(results)
    })
}
