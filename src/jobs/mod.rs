//! Every job kind's runner, registered in one list (the kinds are declared in [`kinds`], what a
//! change writes for them in [`outbox`]). The `Jobs` dispatcher of `rampart_actors` claims,
//! retries and records; this module says what each kind does.
//!
//! Delivery is at least once, so every runner is idempotent:
//!
//! | kind              | queue       | attempts             | why running twice is harmless                                  |
//! |-------------------|-------------|----------------------|----------------------------------------------------------------|
//! | `order_email`     | `email`     | `jobs.max_attempts`  | the job id is the Message-ID and the `.eml` file's name        |
//! | `webhook`         | `webhooks`  | `jobs.max_attempts`  | one event id per event, kept across retries: receivers dedupe  |
//! | `order_sms`       | `sms`       | `jobs.max_attempts`  | the job id is the message's: one file name, `Idempotency-Key`  |
//! | `sales_report`    | `reports`   | 3                    | rebuilds the same report row from the same orders              |
//! | `order_analytics` | `analytics` | `jobs.max_attempts`  | one `analytics_applied` row per order and event, in its update |
//! | `audit`           | `audit`     | `jobs.max_attempts`  | the audit row's id is the job's id                             |
//! | `noop`            | `noop`      | `jobs.max_attempts`  | does nothing: probes the pipeline (benchmarks, smoke tests)    |
//!
//! An order's email, webhook and analytics jobs share its id as ordering key: they follow the
//! order's events in order. Analytics and audit run in batches (up to [`context::BATCH`] jobs in one
//! statement): a job each was as much database work as the checkout that wrote it. Analytics
//! and audit run in their claim ([`InClaim`]): claim, work and outcome are one transaction,
//! their database work is done exactly once, and a job done leaves the table. Mail is an
//! external effect, never made inside a transaction that can roll back: its jobs are claimed in
//! batches under a committed lease, and each mail sent and its outcome recorded before the next
//! ([`rampart_actors::Effect`]).
//! Webhooks (slow receivers behind their hosts' circuits), SMS (a provider behind its circuit,
//! or files; an order's SMS share its id as ordering key too) and reports (long, their progress
//! shown) run apart.

pub mod analytics;
pub mod audit;
pub mod context;
pub mod email;
pub mod kinds;
pub mod outbox;
pub mod reports;
pub mod sms;
pub mod webhook;

use crate::jobs::context::JobContext;
use crate::jobs::kinds::{
    AUDIT, NOOP, ORDER_ANALYTICS, ORDER_EMAIL, ORDER_SMS, SALES_REPORT, WEBHOOK,
};
use crate::store::jobs::Kind;
use futures_util::future::LocalBoxFuture;
use rampart_actors::{ClaimedJob, Effect, InClaim, JobFailure, JobRunner, Runners};
use std::sync::Arc;

/// Every kind's runner, by kind name.
pub fn runners(ctx: JobContext) -> Runners {
    let mut runners = Runners::new();
    let mut add = |kind: &Kind, runner: Arc<dyn JobRunner>| {
        let traced: Arc<dyn JobRunner> = Arc::new(Traced(runner));
        runners.insert(kind.name.to_owned(), (traced, kind.queue.to_owned()));
    };
    add(&ORDER_EMAIL, Arc::new(email::OrderEmail::new(ctx.clone())));
    add(&WEBHOOK, Arc::new(webhook::Webhook::new(ctx.clone())));
    add(&ORDER_SMS, Arc::new(sms::OrderSms::new(ctx.clone())));
    add(&SALES_REPORT, Arc::new(reports::SalesReport(ctx.clone())));
    add(
        &ORDER_ANALYTICS,
        Arc::new(InClaim(analytics::OrderAnalytics)),
    );
    add(&AUDIT, Arc::new(InClaim(audit::Audit)));
    add(&NOOP, Arc::new(Noop));
    runners
}

/// A runner whose runs continue the trace of the request that enqueued each job: a `job <kind>`
/// span, child of the context stored with the job's row, around the run (or the mail sent).
struct Traced(Arc<dyn JobRunner>);

/// A run continues the trace of the request that enqueued it when that one was traced.
fn job_span(job: &ClaimedJob) -> tracing::Span {
    let Some(parent) = crate::telemetry::stored_parent(job.trace_context.as_deref()) else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        target: rampart_actors::trace::TARGET,
        "job",
        otel.name = %format_args!("job {}", job.kind),
        job.id = %job.id,
        job.attempt = job.attempt,
        trace_id = tracing::field::Empty,
    );
    crate::telemetry::adopt(&span, parent);
    span
}

impl JobRunner for Traced {
    fn run(&self, job: ClaimedJob) -> LocalBoxFuture<'static, Result<(), JobFailure>> {
        let span = job_span(&job);
        Box::pin(tracing::Instrument::instrument(self.0.run(job), span))
    }

    fn batch(&self) -> usize {
        self.0.batch()
    }

    fn in_claim(&self) -> Option<&dyn rampart_actors::ClaimRunner> {
        self.0.in_claim()
    }

    fn effects(&self, jobs: &[ClaimedJob]) -> Option<LocalBoxFuture<'static, Vec<Effect>>> {
        let effects = self.0.effects(jobs)?;
        let spans: Vec<tracing::Span> = jobs.iter().map(job_span).collect();
        Some(Box::pin(async move {
            effects
                .await
                .into_iter()
                .zip(spans)
                .map(|(effect, span)| match effect {
                    Effect::Pending(send) => {
                        Effect::Pending(Box::pin(tracing::Instrument::instrument(send, span)))
                    }
                    settled => settled,
                })
                .collect()
        }))
    }
}

/// `noop`: succeeds at once. What is measured through it is the dispatcher itself.
struct Noop;

impl JobRunner for Noop {
    fn run(&self, _: ClaimedJob) -> LocalBoxFuture<'static, Result<(), JobFailure>> {
        Box::pin(std::future::ready(Ok(())))
    }
}
