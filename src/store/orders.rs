//! Orders: reads, lists and status changes (the checkout that creates them is `checkout.rs`).

use crate::domain::listing::{KeyValue, Page, Position};
use crate::domain::order::{OrderFilter, OrderStatus};
use crate::store::audit::Changes;
use crate::store::jobs::{enqueue, Outbox};
use crate::store::paging::{self, page_tail, ListSql, PageOf, Param};
use crate::store::transaction::in_transaction;
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use rampart_actors::{Conn, DbCommand, DbError};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderItem {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub unit_price_cents: i64,
    pub quantity: i32,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Order {
    pub id: Uuid,
    pub number: i64,
    pub status: String,
    pub customer_email: String,
    pub customer_name: Option<String>,
    /// E.164; null when the checkout gave none (then no SMS is sent).
    #[schema(required = true)]
    pub customer_phone: Option<String>,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ORDER_COLUMNS: &str = "o.id, o.number, o.status, o.customer_email, o.customer_name, o.total_cents, o.currency, o.created_at, o.updated_at,
    coalesce((SELECT json_agg(json_build_object('product_id', i.product_id, 'sku', i.sku, 'name', i.name,
        'unit_price_cents', i.unit_price_cents, 'quantity', i.quantity) ORDER BY i.line)
        FROM order_items i WHERE i.order_id = o.id), '[]'::json), o.customer_phone";

impl Order {
    fn from_row(row: &Row) -> Result<Self, DbError> {
        let items: serde_json::Value = row.get(9);
        Ok(Self {
            id: row.get(0),
            number: row.get(1),
            status: row.get(2),
            customer_email: row.get(3),
            customer_name: row.get(4),
            customer_phone: row.get(10),
            total_cents: row.get(5),
            currency: row.get(6),
            created_at: row.get(7),
            updated_at: row.get(8),
            items: serde_json::from_value(items)
                .map_err(|e| DbError::Other(format!("order items: {e}")))?,
        })
    }

    pub fn position(&self) -> Position {
        Position {
            key: KeyValue::Time(self.created_at),
            id: self.id,
        }
    }
}

pub struct Get {
    pub merchant_id: Uuid,
    pub id: Uuid,
}

/// Orders by id, each with its merchant's id and name (the jobs' read of their orders), as rows:
/// [`OrderRows::decode`] may run on another thread than the read.
pub async fn get_many(
    client: &impl deadpool_postgres::GenericClient,
    ids: &[Uuid],
) -> Result<OrderRows, DbError> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {ORDER_COLUMNS}, o.merchant_id, m.name FROM orders o
             JOIN merchants m ON m.id = o.merchant_id WHERE o.id = ANY($1)"
        ))
        .await?;
    Ok(OrderRows(client.query(&stmt, &[&ids]).await?))
}

/// What [`get_many`] read.
pub struct OrderRows(Vec<Row>);

impl OrderRows {
    /// Each order with its merchant's id and name.
    pub fn decode(&self) -> Result<Vec<(Uuid, String, Order)>, DbError> {
        self.0
            .iter()
            .map(|r| Ok((r.get(11), r.get(12), Order::from_row(r)?)))
            .collect()
    }
}

async fn get_order(
    client: &impl deadpool_postgres::GenericClient,
    merchant_id: Uuid,
    id: Uuid,
) -> Result<Option<Order>, DbError> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders o WHERE o.id = $1 AND o.merchant_id = $2"
        ))
        .await?;
    client
        .query_opt(&stmt, &[&id, &merchant_id])
        .await?
        .as_ref()
        .map(Order::from_row)
        .transpose()
}

impl DbCommand for Get {
    type Output = Option<Order>;

    fn rows(output: &Option<Order>) -> Option<usize> {
        Some(usize::from(output.is_some()))
    }

    async fn run(self, conn: &mut Conn) -> Result<Option<Order>, DbError> {
        get_order(&**conn, self.merchant_id, self.id).await
    }
}

#[derive(Debug, Clone)]
pub struct OrderQuery {
    pub merchant_id: Uuid,
    pub filter: OrderFilter,
    pub page: Page,
}

/// The page query and, for offset pages, the count query of an order list.
pub fn list_sql(q: &OrderQuery) -> Result<ListSql, DbError> {
    let filters = || {
        let mut params: Vec<Param> = vec![Box::new(q.merchant_id)];
        let mut conditions = vec!["o.merchant_id = $1".to_owned()];
        if let Some(s) = q.filter.status {
            params.push(Box::new(s.as_str()));
            conditions.push(format!("o.status = ${}", params.len()));
        }
        if let Some(from) = q.filter.from {
            params.push(Box::new(from));
            conditions.push(format!("o.created_at >= ${}", params.len()));
        }
        if let Some(until) = q.filter.until {
            params.push(Box::new(until));
            conditions.push(format!("o.created_at < ${}", params.len()));
        }
        (conditions, params)
    };
    let (mut conditions, mut params) = filters();
    let count = match q.page {
        Page::Offset { .. } => {
            let (c, p) = filters();
            paging::count_sql(&q.page, "orders o", &c, p)
        }
        Page::Keyset { .. } => None,
    };
    let after_key = paging::time_after(&q.page)?;
    let tail = page_tail(
        &q.page,
        after_key,
        "(o.created_at, o.id)",
        true,
        &mut conditions,
        &mut params,
    );
    let sql = format!(
        "SELECT {ORDER_COLUMNS} FROM orders o WHERE {} ORDER BY o.created_at DESC, o.id DESC {tail}",
        conditions.join(" AND ")
    );
    Ok((sql, params, count))
}

pub struct List(pub OrderQuery);

impl DbCommand for List {
    type Output = PageOf<Order>;

    fn rows(output: &PageOf<Order>) -> Option<usize> {
        Some(output.rows.len())
    }

    async fn run(self, conn: &mut Conn) -> Result<PageOf<Order>, DbError> {
        let sql = list_sql(&self.0)?;
        paging::fetch(conn, &self.0.page, sql, Order::from_row).await
    }
}

pub struct ChangeStatus {
    pub merchant_id: Uuid,
    pub id: Uuid,
    pub to: OrderStatus,
    pub outbox: Outbox,
}

#[derive(Debug)]
pub enum StatusOutcome {
    /// The order, and whether a webhook job was written (an SMS job was when the order has a
    /// phone).
    Changed(Order, bool),
    NotFound,
    NotAllowed {
        from: String,
    },
}

impl ChangeStatus {
    async fn attempt(&self, tx: &Transaction<'_>) -> Result<StatusOutcome, DbError> {
        let stmt = tx
            .prepare_cached(
                "SELECT o.status, m.webhook_url IS NOT NULL, o.customer_phone IS NOT NULL
                 FROM orders o JOIN merchants m ON m.id = o.merchant_id
                 WHERE o.id = $1 AND o.merchant_id = $2 FOR UPDATE OF o",
            )
            .await?;
        let Some(row) = tx.query_opt(&stmt, &[&self.id, &self.merchant_id]).await? else {
            return Ok(StatusOutcome::NotFound);
        };
        let from: String = row.get(0);
        let has_webhook: bool = row.get(1);
        let has_phone: bool = row.get(2);
        if !OrderStatus::parse(&from).is_some_and(|f| f.can_become(self.to)) {
            return Ok(StatusOutcome::NotAllowed { from });
        }
        if self.to == OrderStatus::Cancelled {
            // Stock goes back in the same transaction, products locked in id order as checkout does.
            let stmt = tx
                .prepare_cached("SELECT product_id, sum(quantity)::bigint FROM order_items WHERE order_id = $1 GROUP BY product_id ORDER BY product_id")
                .await?;
            let rows = tx.query(&stmt, &[&self.id]).await?;
            let ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
            let qty: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
            tx.execute(
                "SELECT 1 FROM products WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
                &[&ids],
            )
            .await?;
            let stmt = tx
                .prepare_cached(
                    "UPDATE products SET stock = stock + d.q, version = version + 1, updated_at = now()
                     FROM unnest($1::uuid[], $2::bigint[]) AS d(id, q) WHERE products.id = d.id",
                )
                .await?;
            tx.execute(&stmt, &[&ids, &qty]).await?;
        }
        tx.execute(
            "UPDATE orders SET status = $2, updated_at = now() WHERE id = $1",
            &[&self.id, &self.to.as_str()],
        )
        .await?;
        let event = format!("order.{}", self.to.as_str());
        let to = self.to.as_str().to_owned();
        let changes = Changes::new().field("status", &from, &to).into_value();
        let mut jobs =
            (self.outbox.order_jobs)(&event, self.id, has_webhook, "merchant", Some(changes));
        if has_phone {
            jobs.push((self.outbox.sms_job)(&event, self.id));
        }
        enqueue(tx, self.merchant_id, jobs, self.outbox.default_attempts).await?;
        match get_order(tx, self.merchant_id, self.id).await? {
            Some(order) => Ok(StatusOutcome::Changed(order, has_webhook)),
            None => Ok(StatusOutcome::NotFound),
        }
    }
}

impl DbCommand for ChangeStatus {
    type Output = StatusOutcome;

    async fn run(self, conn: &mut Conn) -> Result<StatusOutcome, DbError> {
        in_transaction(conn, async |tx| {
            let outcome = self.attempt(tx).await?;
            let commit = matches!(outcome, StatusOutcome::Changed(..));
            Ok((outcome, commit))
        })
        .await
    }
}

/// Deletes idempotency keys older than 24 hours; they no longer replay anyway.
pub struct PruneIdempotencyKeys;

impl DbCommand for PruneIdempotencyKeys {
    type Output = u64;

    async fn run(self, conn: &mut Conn) -> Result<u64, DbError> {
        Ok(conn
            .execute(
                "DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'",
                &[],
            )
            .await?)
    }
}
