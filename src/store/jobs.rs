//! The job queue's table as the store sees it: the outbox (jobs written in the same transaction
//! as the effects they follow; the deduplication key makes enqueueing idempotent) and a job's
//! view. The store names no kind of job: a change is handed the kinds, as data, by the jobs
//! layer ([`Outbox`]).
//!
//! No `NOTIFY` inside these transactions: PostgreSQL serialises every notifying commit on one
//! cluster-wide lock, taken while the transaction still holds its product row locks (measured at
//! 10-15% of the checkout ceiling). The request wakes the dispatcher after commit
//! (`AppState::wake_jobs`), which notifies the other instances.

use deadpool_postgres::Transaction;
use rampart_actors::DbError;
use serde_json::Value;
use uuid::Uuid;

/// One kind of job, as the queue's table knows it.
#[derive(Debug)]
pub struct Kind {
    pub name: &'static str,
    pub queue: &'static str,
    /// `None`: `jobs.max_attempts`.
    pub max_attempts: Option<i32>,
}

pub struct NewJob {
    pub kind: &'static Kind,
    pub payload: Value,
    pub dedup_key: String,
    /// Jobs sharing it run one at a time, oldest first.
    pub ordering_key: Option<String>,
}

/// What a change hands the store so that the jobs following it are written in its own
/// transaction: the jobs layer's recipes (`jobs::outbox`), with the kinds they name.
#[derive(Clone, Copy)]
pub struct Outbox {
    /// The jobs that follow an order event: `(event, order_id, has_webhook, actor, changes)`.
    pub order_jobs: fn(&str, Uuid, bool, &str, Option<Value>) -> Vec<NewJob>,
    /// The SMS job of an order event, for an order with a phone number: `(event, order_id)`.
    pub sms_job: fn(&str, Uuid) -> NewJob,
    /// The audit job of a change: `(action, actor, entity_type, entity_id, changes)`
    /// (`changes`: the fields an update changed, `store::audit::Changes`; `None` for others).
    pub audit_job: fn(&str, &str, &str, &str, Option<Value>) -> NewJob,
    /// The attempts of a kind that names none (`jobs.max_attempts`).
    pub default_attempts: i32,
}

pub async fn enqueue(
    tx: &Transaction<'_>,
    merchant_id: Uuid,
    jobs: Vec<NewJob>,
    default_attempts: i32,
) -> Result<Vec<Uuid>, DbError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = jobs.iter().map(|_| Uuid::now_v7()).collect();
    let queues: Vec<&str> = jobs.iter().map(|j| j.kind.queue).collect();
    let kinds: Vec<&str> = jobs.iter().map(|j| j.kind.name).collect();
    let attempts: Vec<i32> = jobs
        .iter()
        .map(|j| j.kind.max_attempts.unwrap_or(default_attempts))
        .collect();
    let ordering: Vec<Option<&str>> = jobs.iter().map(|j| j.ordering_key.as_deref()).collect();
    let payloads: Vec<Value> = jobs.iter().map(|j| j.payload.clone()).collect();
    let dedup: Vec<&str> = jobs.iter().map(|j| j.dedup_key.as_str()).collect();
    // The runs continue the trace of the change that wrote them.
    let trace = crate::telemetry::traceparent();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO jobs (id, merchant_id, queue, kind, payload, max_attempts, dedup_key, ordering_key, trace_context)
             SELECT j.id, $2, j.queue, j.kind, j.payload, j.attempts, j.dedup, j.ordering, $9
             FROM unnest($1::uuid[], $3::int[], $4::text[], $5::text[], $6::jsonb[], $7::text[], $8::text[])
                 AS j(id, attempts, queue, kind, payload, dedup, ordering)
             ON CONFLICT (queue, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &ids,
            &merchant_id,
            &attempts,
            &queues,
            &kinds,
            &payloads,
            &dedup,
            &ordering,
            &trace,
        ],
    )
    .await?;
    Ok(ids)
}

/// A job as `GET /api/v1/jobs/{id}` shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    /// queued | running | succeeded | failed (a retry is scheduled) | dead (no attempts left)
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub run_at: chrono::DateTime<chrono::Utc>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// One of the merchant's jobs (another merchant's is not found).
pub struct GetJob {
    pub merchant_id: Uuid,
    pub id: Uuid,
}

impl rampart_actors::DbCommand for GetJob {
    type Output = Option<JobView>;

    async fn run(self, conn: &mut rampart_actors::Conn) -> Result<Option<JobView>, DbError> {
        Ok(conn
            .query_opt(
                "SELECT id, queue, kind, status, attempts, max_attempts, last_error, run_at, created_at, finished_at
                 FROM jobs WHERE id = $1 AND merchant_id = $2",
                &[&self.id, &self.merchant_id],
            )
            .await?
            .map(|r| JobView {
                id: r.get(0),
                queue: r.get(1),
                kind: r.get(2),
                status: r.get(3),
                attempts: r.get(4),
                max_attempts: r.get(5),
                last_error: r.get(6),
                run_at: r.get(7),
                created_at: r.get(8),
                finished_at: r.get(9),
            }))
    }
}
