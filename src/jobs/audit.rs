//! `audit`: one row of the merchant's audit trail per change (who, what, which entity, when).
//! The row's id is the job's, so a second run inserts nothing.

use super::{field, retry, JobContext};
use chrono::{DateTime, Utc};
use futures_util::future::LocalBoxFuture;
use rampart_actors::{BatchRunner, ClaimedJob, Conn, DbCommand, DbError, JobFailure};
use uuid::Uuid;

pub struct Audit(pub JobContext);

impl BatchRunner for Audit {
    fn batch(&self) -> usize {
        super::BATCH
    }

    /// One insert for every well-formed job of the batch.
    fn run_batch(
        &self,
        jobs: Vec<ClaimedJob>,
    ) -> LocalBoxFuture<'static, Vec<Result<(), JobFailure>>> {
        let db = self.0.db.clone();
        super::batch_of(&jobs, row, move |rows| {
            Box::pin(async move { db.run(Insert(rows)).await.map_err(retry) })
        })
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
}

struct Insert(Vec<Row>);

impl DbCommand for Insert {
    type Output = ();

    async fn run(self, conn: &mut Conn) -> Result<(), DbError> {
        let rows = self.0;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let merchants: Vec<Uuid> = rows.iter().map(|r| r.merchant_id).collect();
        let actors: Vec<&str> = rows.iter().map(|r| r.actor.as_str()).collect();
        let actions: Vec<&str> = rows.iter().map(|r| r.action.as_str()).collect();
        let types: Vec<&str> = rows.iter().map(|r| r.entity_type.as_str()).collect();
        let entities: Vec<&str> = rows.iter().map(|r| r.entity_id.as_str()).collect();
        let ats: Vec<DateTime<Utc>> = rows.iter().map(|r| r.at).collect();
        let tx = conn.transaction().await?;
        tx.batch_execute(rampart_actors::jobs::ASYNC_COMMIT).await?;
        tx.execute(
            "INSERT INTO audit_log (id, merchant_id, actor, action, entity_type, entity_id, at)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[])
             ON CONFLICT (id) DO NOTHING",
            &[&ids, &merchants, &actors, &actions, &types, &entities, &ats],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
