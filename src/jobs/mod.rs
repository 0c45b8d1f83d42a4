//! The job kinds, declared in one list, and their runners. The `Jobs` dispatcher of
//! `rampart_actors` claims, retries and records; this module says what each kind does.
//!
//! Delivery is at least once, so every runner is idempotent:
//!
//! | kind              | queue       | attempts             | why running twice is harmless                                  |
//! |-------------------|-------------|----------------------|----------------------------------------------------------------|
//! | `order_email`     | `email`     | `jobs.max_attempts`  | one Message-ID per event and order (the same `.eml` file)      |
//! | `webhook`         | `webhooks`  | `jobs.max_attempts`  | one event id per event, kept across retries: receivers dedupe  |
//! | `sales_report`    | `reports`   | 3                    | rebuilds the same report row from the same orders              |
//! | `order_analytics` | `analytics` | `jobs.max_attempts`  | one `analytics_applied` row per order and event, in its update |
//! | `audit`           | `audit`     | `jobs.max_attempts`  | the audit row's id is the job's id                             |
//! | `noop`            | `noop`      | `jobs.max_attempts`  | does nothing: probes the pipeline (benchmarks, smoke tests)    |
//!
//! An order's email, webhook and analytics jobs share its id as ordering key: they follow the
//! order's events in order. Analytics and audit run in batches (up to [`BATCH`] jobs in one
//! statement): a job each was as much database work as the checkout that wrote it. Mail,
//! analytics and audit run in their claim ([`InClaim`]): claim, work and outcome are one
//! transaction, their database work is done exactly once, and a job done leaves the table.
//! Webhooks (slow receivers behind their hosts' circuits) and reports (long, their progress
//! shown) run apart.

/// The most mail, analytics or audit jobs one run takes. A run costs a claim (planned for each
/// call), a transaction and a statement or two beyond its rows; while requests are busy a queue
/// claims four times a second, so this is also what a queue can take per second then (1,024:
/// more than the checkouts write, 700-900 a second in bench runs).
pub const BATCH: usize = 256;

pub mod analytics;
pub mod audit;
pub mod email;
pub mod reports;
pub mod webhook;

use crate::settings::Settings;
use futures_util::future::LocalBoxFuture;
use rampart_actors::{
    BreakerBoard, Breakers, ClaimedJob, Db, DbError, Handle, InClaim, JobFailure, JobRunner,
    Runners,
};
use std::sync::Arc;

/// One kind of job.
#[derive(Debug)]
pub struct Kind {
    pub name: &'static str,
    pub queue: &'static str,
    /// `None`: `jobs.max_attempts`.
    pub max_attempts: Option<i32>,
}

pub const ORDER_EMAIL: Kind = Kind {
    name: "order_email",
    queue: "email",
    max_attempts: None,
};
pub const WEBHOOK: Kind = Kind {
    name: "webhook",
    queue: "webhooks",
    max_attempts: None,
};
pub const SALES_REPORT: Kind = Kind {
    name: "sales_report",
    queue: "reports",
    max_attempts: Some(3),
};
pub const ORDER_ANALYTICS: Kind = Kind {
    name: "order_analytics",
    queue: "analytics",
    max_attempts: None,
};
pub const AUDIT: Kind = Kind {
    name: "audit",
    queue: "audit",
    max_attempts: None,
};

pub const NOOP: Kind = Kind {
    name: "noop",
    queue: "noop",
    max_attempts: None,
};

pub const KINDS: [&Kind; 6] = [
    &ORDER_EMAIL,
    &WEBHOOK,
    &SALES_REPORT,
    &ORDER_ANALYTICS,
    &AUDIT,
    &NOOP,
];

/// The kinds an order event writes (`store::jobs::for_order_event`): the webhook only when the
/// merchant has a URL.
pub fn order_event(webhook: bool) -> &'static [&'static Kind] {
    const WITH: [&Kind; 4] = [&ORDER_EMAIL, &WEBHOOK, &ORDER_ANALYTICS, &AUDIT];
    const WITHOUT: [&Kind; 3] = [&ORDER_EMAIL, &ORDER_ANALYTICS, &AUDIT];
    if webhook {
        &WITH
    } else {
        &WITHOUT
    }
}

/// What runners use: actor handles and settings, as handlers do.
#[derive(Clone)]
pub struct JobContext {
    pub db: Handle<Db>,
    pub settings: Arc<Settings>,
    pub breakers: BreakerBoard,
    pub circuits: Handle<Breakers>,
}

/// Every kind's runner, by kind name.
pub fn runners(ctx: JobContext) -> Runners {
    let mut runners = Runners::new();
    let mut add = |kind: &Kind, runner: Arc<dyn JobRunner>| {
        runners.insert(kind.name.to_owned(), (runner, kind.queue.to_owned()));
    };
    add(
        &ORDER_EMAIL,
        Arc::new(InClaim(email::OrderEmail::new(ctx.clone()))),
    );
    add(&WEBHOOK, Arc::new(webhook::Webhook::new(ctx.clone())));
    add(&SALES_REPORT, Arc::new(reports::SalesReport(ctx.clone())));
    add(
        &ORDER_ANALYTICS,
        Arc::new(InClaim(analytics::OrderAnalytics)),
    );
    add(&AUDIT, Arc::new(InClaim(audit::Audit)));
    add(&NOOP, Arc::new(Noop));
    runners
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

/// `noop`: succeeds at once. What is measured through it is the dispatcher itself.
struct Noop;

impl JobRunner for Noop {
    fn run(&self, _: ClaimedJob) -> LocalBoxFuture<'static, Result<(), JobFailure>> {
        Box::pin(std::future::ready(Ok(())))
    }
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
