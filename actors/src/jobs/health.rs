//! Queue health from the table ([`QueueHealth`]): what waits, runs, failed and died, in every
//! instance together; read on the probe's own connection ([`ReadQueueHealth`]), so ops never
//! queue behind requests.

use crate::admission::Handle;
use crate::db::{DbError, DbProbe, ProbeQuery};
use serde::Serialize;
use std::time::Duration;

/// Queue health from the table: what waits, runs, failed and died, in every instance together.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct QueueHealth {
    pub queue: String,
    /// Due or scheduled, not running (queued, or failed awaiting a retry).
    pub depth: i64,
    pub running: i64,
    pub failed: i64,
    pub dead: i64,
    /// Seconds the oldest due job has waited (0: none due).
    pub oldest_due_secs: f64,
}

/// Reads every queue's health: a query the jobs give the probe.
pub struct ReadQueueHealth;

impl ProbeQuery for ReadQueueHealth {
    type Output = Vec<QueueHealth>;

    async fn run(
        self,
        client: &tokio_postgres::Client,
    ) -> Result<Vec<QueueHealth>, tokio_postgres::Error> {
        let rows = client
            .query(
                "SELECT queue,
                    count(*) FILTER (WHERE status IN ('queued', 'failed')),
                    count(*) FILTER (WHERE status = 'running'),
                    count(*) FILTER (WHERE status = 'failed'),
                    count(*) FILTER (WHERE status = 'dead'),
                    coalesce(extract(epoch FROM now() - min(run_at)
                        FILTER (WHERE status IN ('queued', 'failed') AND run_at <= now())), 0)::float8
                 FROM jobs WHERE status <> 'succeeded' GROUP BY queue ORDER BY queue",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| QueueHealth {
                queue: r.get(0),
                depth: r.get(1),
                running: r.get(2),
                failed: r.get(3),
                dead: r.get(4),
                oldest_due_secs: r.get(5),
            })
            .collect())
    }
}

impl Handle<DbProbe> {
    /// The job queues' health within `within`.
    pub async fn queues(&self, within: Duration) -> Result<Vec<QueueHealth>, DbError> {
        self.probe(ReadQueueHealth, within).await
    }
}
