//! `audit`: one row of the merchant's audit trail per change (who, what, which entity, when).
//! The row's id is the job's, so a second run inserts nothing.

use super::{field, retry, JobContext};
use chrono::{DateTime, Utc};
use futures_util::future::LocalBoxFuture;
use rampart_actors::{ClaimedJob, Conn, DbCommand, DbError, JobFailure, JobRunner};
use uuid::Uuid;

pub struct Audit(pub JobContext);

impl JobRunner for Audit {
    fn run(&self, job: ClaimedJob) -> LocalBoxFuture<'static, Result<(), JobFailure>> {
        let db = self.0.db.clone();
        Box::pin(async move {
            let row = Insert {
                id: job.id,
                merchant_id: job
                    .merchant_id
                    .ok_or_else(|| JobFailure::Permanent("audit job without merchant".into()))?,
                actor: field(&job, "actor")?,
                action: field(&job, "action")?,
                entity_type: field(&job, "entity_type")?,
                entity_id: field(&job, "entity_id")?,
                at: job.created_at.into(),
            };
            db.run(row).await.map_err(retry)
        })
    }
}

struct Insert {
    id: Uuid,
    merchant_id: Uuid,
    actor: String,
    action: String,
    entity_type: String,
    entity_id: String,
    at: DateTime<Utc>,
}

impl DbCommand for Insert {
    type Output = ();

    async fn run(self, conn: &mut Conn) -> Result<(), DbError> {
        let tx = conn.transaction().await?;
        tx.batch_execute(rampart_actors::jobs::ASYNC_COMMIT).await?;
        tx.execute(
            "INSERT INTO audit_log (id, merchant_id, actor, action, entity_type, entity_id, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
            &[
                &self.id,
                &self.merchant_id,
                &self.actor,
                &self.action,
                &self.entity_type,
                &self.entity_id,
                &self.at,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
