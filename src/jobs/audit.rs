//! `audit`: one row of the merchant's audit trail per change (who, what, which entity, when,
//! and for an update the fields it changed). The row's id is the job's, so a second run inserts
//! nothing.

use crate::jobs::context::{batch_of, field, BATCH};
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use futures_util::future::LocalBoxFuture;
use rampart_actors::{ClaimRunner, ClaimedJob, DbError, JobFailure};
use uuid::Uuid;

/// Runs in its claim ([`rampart_actors::InClaim`]): the entry commits with the job's outcome.
pub struct Audit;

impl ClaimRunner for Audit {
    fn batch(&self) -> usize {
        BATCH
    }

    /// One insert for every well-formed job of the batch.
    fn apply<'a>(
        &'a self,
        tx: &'a Transaction<'_>,
        jobs: &'a [ClaimedJob],
    ) -> LocalBoxFuture<'a, Result<Vec<Result<(), JobFailure>>, DbError>> {
        batch_of(jobs, row, move |rows| Box::pin(insert(tx, rows)))
    }
}

fn row(job: &ClaimedJob) -> Result<Row, JobFailure> {
    Ok(Row {
        id: job.id,
        merchant_id: job
            .merchant_id
            .ok_or_else(|| JobFailure::Permanent("audit job without merchant".into()))?,
        actor: field(job, "actor")?,
        action: field(job, "action")?,
        entity_type: field(job, "entity_type")?,
        entity_id: field(job, "entity_id")?,
        at: job.created_at.into(),
        // Absent (an entry that is not an update, or a job queued before updates carried it): null.
        changes: job.payload.get("changes").filter(|c| !c.is_null()).cloned(),
    })
}

#[derive(Clone)]
struct Row {
    id: Uuid,
    merchant_id: Uuid,
    actor: String,
    action: String,
    entity_type: String,
    entity_id: String,
    at: DateTime<Utc>,
    changes: Option<serde_json::Value>,
}

async fn insert(tx: &Transaction<'_>, rows: Vec<Row>) -> Result<(), DbError> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let merchants: Vec<Uuid> = rows.iter().map(|r| r.merchant_id).collect();
    let actors: Vec<&str> = rows.iter().map(|r| r.actor.as_str()).collect();
    let actions: Vec<&str> = rows.iter().map(|r| r.action.as_str()).collect();
    let types: Vec<&str> = rows.iter().map(|r| r.entity_type.as_str()).collect();
    let entities: Vec<&str> = rows.iter().map(|r| r.entity_id.as_str()).collect();
    let ats: Vec<DateTime<Utc>> = rows.iter().map(|r| r.at).collect();
    let changes: Vec<Option<&serde_json::Value>> =
        rows.iter().map(|r| r.changes.as_ref()).collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO audit_log (id, merchant_id, actor, action, entity_type, entity_id, at, changes)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::jsonb[])
             ON CONFLICT (id) DO NOTHING",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &ids, &merchants, &actors, &actions, &types, &entities, &ats, &changes,
        ],
    )
    .await?;
    Ok(())
}
