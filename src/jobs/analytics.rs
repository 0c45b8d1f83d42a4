//! `order_analytics`: daily sales per merchant, applied exactly once per order event.
//!
//! Each event inserts its `analytics_applied` row in the same transaction as its change to
//! `analytics_daily`; a second run finds the row and changes nothing. An order counts while its
//! creation is applied and its cancellation is not, whichever job runs first.

use crate::jobs::context::{batch_of, field, BATCH};
use chrono::NaiveDate;
use deadpool_postgres::Transaction;
use futures_util::future::LocalBoxFuture;
use rampart_actors::{ClaimRunner, ClaimedJob, Conn, DbCommand, DbError, JobFailure};
use serde::Serialize;
use uuid::Uuid;

/// Runs in its claim ([`rampart_actors::InClaim`]): its writes commit with the job's outcome.
pub struct OrderAnalytics;

/// The order and its event, or why the payload is unusable.
fn event(job: &ClaimedJob) -> Result<(Uuid, String), JobFailure> {
    let event: String = field(job, "event")?;
    let order_id: Uuid = field(job, "order_id")?;
    match event.as_str() {
        "order.created" | "order.cancelled" => Ok((order_id, event)),
        other => Err(JobFailure::Permanent(format!("no analytics for {other}"))),
    }
}

impl ClaimRunner for OrderAnalytics {
    fn batch(&self) -> usize {
        BATCH
    }

    /// Every well-formed event of the batch in one statement ([`APPLY`]).
    fn apply<'a>(
        &'a self,
        tx: &'a Transaction<'_>,
        jobs: &'a [ClaimedJob],
    ) -> LocalBoxFuture<'a, Result<Vec<Result<(), JobFailure>>, DbError>> {
        batch_of(jobs, event, move |events| {
            Box::pin(async move {
                let (orders, events): (Vec<Uuid>, Vec<String>) = events.into_iter().unzip();
                let stmt = tx.prepare_cached(APPLY).await?;
                tx.execute(&stmt, &[&orders, &events]).await?;
                Ok(())
            })
        })
    }
}

/// Applies order events to the daily aggregates, each once: its `analytics_applied` row is
/// inserted by the same statement. A creation adds unless the order's cancellation is applied
/// (before, or in this batch); a cancellation subtracts only what an earlier creation added. The
/// statement sees `analytics_applied` as it was before it (its own inserts are not visible to
/// its other parts), which is what "before" means here.
const APPLY: &str = "WITH fresh AS (
    INSERT INTO analytics_applied (order_id, event)
    SELECT * FROM unnest($1::uuid[], $2::text[])
    ON CONFLICT DO NOTHING
    RETURNING order_id, event
), delta AS (
    SELECT f.order_id, CASE WHEN f.event = 'order.created' THEN 1 ELSE -1 END AS sign
    FROM fresh f
    WHERE (f.event = 'order.created'
           AND NOT EXISTS (SELECT 1 FROM analytics_applied a WHERE a.order_id = f.order_id AND a.event = 'order.cancelled')
           AND NOT EXISTS (SELECT 1 FROM fresh c WHERE c.order_id = f.order_id AND c.event = 'order.cancelled'))
       OR (f.event = 'order.cancelled'
           AND EXISTS (SELECT 1 FROM analytics_applied a WHERE a.order_id = f.order_id AND a.event = 'order.created'))
)
INSERT INTO analytics_daily AS a (merchant_id, day, orders, units, revenue_cents)
SELECT o.merchant_id, (o.created_at AT TIME ZONE 'UTC')::date, sum(d.sign),
       sum(d.sign * (SELECT coalesce(sum(quantity), 0) FROM order_items WHERE order_id = o.id)),
       sum(d.sign * o.total_cents)
FROM delta d JOIN orders o ON o.id = d.order_id
GROUP BY 1, 2
ON CONFLICT (merchant_id, day) DO UPDATE SET orders = a.orders + excluded.orders,
    units = a.units + excluded.units, revenue_cents = a.revenue_cents + excluded.revenue_cents";

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SalesDay {
    pub day: NaiveDate,
    pub orders: i64,
    pub units: i64,
    pub revenue_cents: i64,
}

/// One row per day of the range, zeros on days without sales.
pub struct Sales {
    pub merchant_id: Uuid,
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl DbCommand for Sales {
    type Output = Vec<SalesDay>;

    async fn run(self, conn: &mut Conn) -> Result<Vec<SalesDay>, DbError> {
        let rows = conn
            .query(
                "SELECT d::date, coalesce(a.orders, 0), coalesce(a.units, 0), coalesce(a.revenue_cents, 0)
                 FROM generate_series($2::date, $3::date, interval '1 day') AS d
                 LEFT JOIN analytics_daily a ON a.merchant_id = $1 AND a.day = d::date
                 ORDER BY d",
                &[&self.merchant_id, &self.from, &self.to],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| SalesDay {
                day: r.get(0),
                orders: r.get(1),
                units: r.get(2),
                revenue_cents: r.get(3),
            })
            .collect())
    }
}
