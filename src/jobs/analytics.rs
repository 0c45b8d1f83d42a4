//! `order_analytics`: daily sales per merchant, applied exactly once per order event.
//!
//! Each event inserts its `analytics_applied` row in the same transaction as its change to
//! `analytics_daily`; a second run finds the row and changes nothing. An order counts while its
//! creation is applied and its cancellation is not, whichever job runs first.

use super::{field, retry, JobContext};
use crate::store::in_transaction;
use chrono::NaiveDate;
use futures_util::future::LocalBoxFuture;
use rampart_actors::{ClaimedJob, Conn, DbCommand, DbError, JobFailure, JobRunner};
use serde::Serialize;
use uuid::Uuid;

pub struct OrderAnalytics(pub JobContext);

impl JobRunner for OrderAnalytics {
    fn run(&self, job: ClaimedJob) -> LocalBoxFuture<'static, Result<(), JobFailure>> {
        let db = self.0.db.clone();
        Box::pin(async move {
            let event: String = field(&job, "event")?;
            let order_id: Uuid = field(&job, "order_id")?;
            let sign = match event.as_str() {
                "order.created" => 1,
                "order.cancelled" => -1,
                other => return Err(JobFailure::Permanent(format!("no analytics for {other}"))),
            };
            db.run(Apply {
                order_id,
                event,
                sign,
            })
            .await
            .map_err(retry)
        })
    }
}

struct Apply {
    order_id: Uuid,
    event: String,
    sign: i64,
}

impl DbCommand for Apply {
    type Output = ();

    async fn run(self, conn: &mut Conn) -> Result<(), DbError> {
        let other = if self.sign > 0 {
            "order.cancelled"
        } else {
            "order.created"
        };
        in_transaction(conn, async |tx| {
            tx.batch_execute(rampart_actors::jobs::ASYNC_COMMIT).await?;
            let fresh = tx
                .execute(
                    "INSERT INTO analytics_applied (order_id, event) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&self.order_id, &self.event],
                )
                .await?;
            if fresh == 0 {
                return Ok(((), true));
            }
            // Creation adds unless the cancellation came first; cancellation subtracts only
            // what a creation added.
            tx.execute(
                "INSERT INTO analytics_daily AS a (merchant_id, day, orders, units, revenue_cents)
                 SELECT o.merchant_id, (o.created_at AT TIME ZONE 'UTC')::date, $2,
                        $2 * (SELECT coalesce(sum(quantity), 0) FROM order_items WHERE order_id = o.id),
                        $2 * o.total_cents
                 FROM orders o
                 WHERE o.id = $1
                   AND EXISTS (SELECT 1 FROM analytics_applied WHERE order_id = $1 AND event = $3) = ($2 < 0)
                 ON CONFLICT (merchant_id, day) DO UPDATE SET orders = a.orders + excluded.orders,
                    units = a.units + excluded.units, revenue_cents = a.revenue_cents + excluded.revenue_cents",
                &[&self.order_id, &self.sign, &other],
            )
            .await?;
            Ok(((), true))
        })
        .await
    }
}

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
