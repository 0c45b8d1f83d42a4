//! The outbox: jobs written in the same transaction as the effects they follow; the
//! deduplication key makes enqueueing idempotent.
//!
//! No `NOTIFY` inside these transactions: PostgreSQL serialises every notifying commit on one
//! cluster-wide lock, taken while the transaction still holds its product row locks (measured at
//! 10-15% of the checkout ceiling). The request wakes the dispatcher after commit
//! (`AppState::wake_jobs`), which notifies the other instances.

use crate::jobs::{Kind, AUDIT, ORDER_ANALYTICS, ORDER_EMAIL, WEBHOOK};
use deadpool_postgres::Transaction;
use rampart_actors::DbError;
use serde_json::Value;
use uuid::Uuid;

pub struct NewJob {
    pub kind: &'static Kind,
    pub payload: Value,
    pub dedup_key: String,
    /// Jobs sharing it run one at a time, oldest first.
    pub ordering_key: Option<String>,
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
    let stmt = tx
        .prepare_cached(
            "INSERT INTO jobs (id, merchant_id, queue, kind, payload, max_attempts, dedup_key, ordering_key)
             SELECT j.id, $2, j.queue, j.kind, j.payload, j.attempts, j.dedup, j.ordering
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
        ],
    )
    .await?;
    Ok(ids)
}

/// The audit job of a change made by `actor` to an entity.
pub fn audit(action: &str, actor: &str, entity_type: &str, entity_id: &str) -> NewJob {
    NewJob {
        kind: &AUDIT,
        payload: serde_json::json!({"action": action, "actor": actor, "entity_type": entity_type, "entity_id": entity_id}),
        dedup_key: Uuid::now_v7().to_string(),
        ordering_key: None,
    }
}

/// The jobs that follow an order event: the customer's email, the merchant's webhook (when it
/// has a URL), analytics and the audit trail.
pub fn for_order_event(event: &str, order_id: Uuid, has_webhook: bool, actor: &str) -> Vec<NewJob> {
    let order = || Some(order_id.to_string());
    let mut jobs = vec![NewJob {
        kind: &ORDER_EMAIL,
        payload: serde_json::json!({"event": event, "order_id": order_id}),
        dedup_key: format!("{event}:{order_id}"),
        ordering_key: order(),
    }];
    if has_webhook {
        jobs.push(NewJob {
            kind: &WEBHOOK,
            payload: serde_json::json!({"event_id": Uuid::now_v7(), "type": event, "order_id": order_id}),
            dedup_key: format!("{event}:{order_id}"),
            ordering_key: order(),
        });
    }
    if matches!(event, "order.created" | "order.cancelled") {
        jobs.push(NewJob {
            kind: &ORDER_ANALYTICS,
            payload: serde_json::json!({"event": event, "order_id": order_id}),
            dedup_key: format!("{event}:{order_id}"),
            ordering_key: order(),
        });
    }
    jobs.push(NewJob {
        dedup_key: format!("{event}:{order_id}"),
        ..audit(event, actor, "order", &order_id.to_string())
    });
    jobs
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
