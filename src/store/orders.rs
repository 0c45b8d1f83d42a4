//! Orders: the checkout transaction, reads, lists and status changes.

use crate::domain::listing::{KeyValue, Page, Position};
use crate::domain::order::{CheckoutRequest, OrderFilter, OrderStatus};
use crate::store::in_transaction;
use crate::store::jobs::{enqueue, for_order_event};
use crate::store::paging::{self, page_tail, ListSql, PageOf, Param};
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use futures_util::TryFutureExt;
use rampart_actors::{Conn, DbCommand, DbError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;
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
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ORDER_COLUMNS: &str = "o.id, o.number, o.status, o.customer_email, o.customer_name, o.total_cents, o.currency, o.created_at, o.updated_at,
    coalesce((SELECT json_agg(json_build_object('product_id', i.product_id, 'sku', i.sku, 'name', i.name,
        'unit_price_cents', i.unit_price_cents, 'quantity', i.quantity) ORDER BY i.line)
        FROM order_items i WHERE i.order_id = o.id), '[]'::json)";

impl Order {
    fn from_row(row: &Row) -> Result<Self, DbError> {
        let items: serde_json::Value = row.get(9);
        Ok(Self {
            id: row.get(0),
            number: row.get(1),
            status: row.get(2),
            customer_email: row.get(3),
            customer_name: row.get(4),
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

pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: Vec<u8>,
}

pub struct Checkout {
    pub merchant_id: Uuid,
    pub request: CheckoutRequest,
    pub idempotency: Option<IdempotencyKey>,
    pub max_attempts: i32,
}

#[derive(Debug)]
pub enum CheckoutOutcome {
    /// The order, serialized once: the same bytes are what an idempotent replay returns.
    Created {
        body: Vec<u8>,
        order_id: Uuid,
        /// Whether a webhook job was written (the merchant has a URL).
        webhook: bool,
    },
    Replayed {
        body: Vec<u8>,
        order_id: Uuid,
    },
    /// Another request with this key is running.
    InFlight,
    /// This key was used with another body.
    KeyReused,
    StoreNotFound,
    /// The item at this index names no active product of this store.
    UnknownProduct {
        index: usize,
    },
    CurrencyMismatch {
        index: usize,
    },
    Insufficient {
        product_id: Uuid,
        available: i64,
        requested: i64,
    },
}

fn key_lock(merchant_id: Uuid, key: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(merchant_id.as_bytes())
        .chain_update(key.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

struct Locked {
    id: Uuid,
    sku: String,
    name: String,
    price_cents: i64,
    currency: String,
    stock: i64,
    active: bool,
}

impl Checkout {
    /// Statements that do not need each other's results are sent together (tokio-postgres
    /// pipelines the queries polled at once on one connection): with `BEGIN`, the deadline and
    /// `COMMIT` the transaction makes seven round trips instead of thirteen, and holds its stock
    /// locks over four of them instead of seven. In bench runs the open checkout transactions
    /// spent most of their time waiting for the service's next statement (`make bench
    /// SCENARIO=jobs`, `postgres_waits`).
    async fn attempt(&self, tx: &Transaction<'_>) -> Result<CheckoutOutcome, DbError> {
        let merchant_stmt = tx
            .prepare_cached(
                "SELECT order_sequence, webhook_url IS NOT NULL FROM merchants WHERE id = $1",
            )
            .await?;
        let merchant_params: [&(dyn ToSql + Sync); 1] = [&self.merchant_id];
        let merchant = tx.query_opt(&merchant_stmt, &merchant_params);
        // One request per key at a time: a second one finds the lock taken and is told so at
        // once instead of waiting. The key's row is read after the lock is taken.
        let key = async {
            let Some(idem) = &self.idempotency else {
                return Ok(None);
            };
            let lock_stmt = tx
                .prepare_cached("SELECT pg_try_advisory_xact_lock($1)")
                .await?;
            let row_stmt = tx
                .prepare_cached(
                    "SELECT request_hash, response_body, created_at > now() - interval '24 hours'
                     FROM idempotency_keys WHERE merchant_id = $1 AND key = $2",
                )
                .await?;
            let lock_key = key_lock(self.merchant_id, &idem.key);
            let lock_params: [&(dyn ToSql + Sync); 1] = [&lock_key];
            let row_params: [&(dyn ToSql + Sync); 2] = [&self.merchant_id, &idem.key];
            let (lock, row) = futures_util::try_join!(
                tx.query_one(&lock_stmt, &lock_params),
                tx.query_opt(&row_stmt, &row_params),
            )?;
            Ok::<_, tokio_postgres::Error>(Some((idem, lock.get::<_, bool>(0), row)))
        };
        let (merchant, key) = futures_util::try_join!(merchant, key)?;
        let Some(merchant) = merchant else {
            return Ok(CheckoutOutcome::StoreNotFound);
        };
        let (sequence, has_webhook): (String, bool) = (merchant.get(0), merchant.get(1));

        if let Some((idem, locked, row)) = key {
            if !locked {
                return Ok(CheckoutOutcome::InFlight);
            }
            if let Some(row) = row {
                if row.get::<_, bool>(2) {
                    if row.get::<_, Vec<u8>>(0) != idem.fingerprint {
                        return Ok(CheckoutOutcome::KeyReused);
                    }
                    let body: Vec<u8> = row.get(1);
                    let order_id = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["id"].as_str().and_then(|s| s.parse().ok()))
                        .unwrap_or_default();
                    return Ok(CheckoutOutcome::Replayed { body, order_id });
                }
                tx.execute(
                    "DELETE FROM idempotency_keys WHERE merchant_id = $1 AND key = $2",
                    &[&self.merchant_id, &idem.key],
                )
                .await?;
            }
        }

        // Lock every product in id order: two checkouts over the same products always take
        // their locks in the same order, so they queue instead of deadlocking.
        let ids: Vec<Uuid> = self.request.lines.iter().map(|l| l.product_id).collect();
        let stmt = tx
            .prepare_cached(
                "SELECT id, sku, name, price_cents, currency, stock, status = 'active'
                 FROM products WHERE merchant_id = $1 AND id = ANY($2) ORDER BY id FOR NO KEY UPDATE",
            )
            .await?;
        let locked: Vec<Locked> = tx
            .query(&stmt, &[&self.merchant_id, &ids])
            .await?
            .iter()
            .map(|r| Locked {
                id: r.get(0),
                sku: r.get(1),
                name: r.get(2),
                price_cents: r.get(3),
                currency: r.get(4),
                stock: r.get(5),
                active: r.get(6),
            })
            .collect();

        let mut currency: Option<&str> = None;
        let mut total: i64 = 0;
        let mut items = Vec::with_capacity(self.request.lines.len());
        for line in &self.request.lines {
            let Some(p) = locked.iter().find(|p| p.id == line.product_id && p.active) else {
                return Ok(CheckoutOutcome::UnknownProduct { index: line.index });
            };
            match currency {
                Some(c) if c != p.currency => {
                    return Ok(CheckoutOutcome::CurrencyMismatch { index: line.index })
                }
                _ => currency = Some(&p.currency),
            }
            if p.stock < line.quantity {
                return Ok(CheckoutOutcome::Insufficient {
                    product_id: p.id,
                    available: p.stock,
                    requested: line.quantity,
                });
            }
            total += p.price_cents * line.quantity;
            items.push(OrderItem {
                product_id: p.id,
                sku: p.sku.clone(),
                name: p.name.clone(),
                unit_price_cents: p.price_cents,
                quantity: line.quantity as i32,
            });
        }
        let currency = currency.unwrap_or_default().to_owned();

        let quantities: Vec<i64> = self.request.lines.iter().map(|l| l.quantity).collect();
        let take_stock = tx
            .prepare_cached(
                "UPDATE products SET stock = stock - d.q, version = version + 1, updated_at = now()
                 FROM unnest($1::uuid[], $2::bigint[]) AS d(id, q) WHERE products.id = d.id",
            )
            .await?;
        // The number and the creation time are taken together, after the stock locks: numbers
        // then increase with `created_at` (a transaction's `now()` is its start, before any wait).
        let insert_order = tx
            .prepare_cached(
                "INSERT INTO orders (id, merchant_id, number, customer_email, customer_name, total_cents, currency, created_at, updated_at)
                 VALUES ($1, $2, nextval($3::text::regclass), $4, $5, $6, $7, clock_timestamp(), clock_timestamp())
                 RETURNING number, created_at, updated_at",
            )
            .await?;
        let insert_items = tx
            .prepare_cached(
                "INSERT INTO order_items (order_id, line, product_id, sku, name, unit_price_cents, quantity)
                 SELECT $1, * FROM unnest($2::int[], $3::uuid[], $4::text[], $5::text[], $6::bigint[], $7::int[])",
            )
            .await?;
        let order_id = Uuid::now_v7();
        let lines: Vec<i32> = (1..=items.len() as i32).collect();
        let skus: Vec<&str> = items.iter().map(|i| i.sku.as_str()).collect();
        let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        let prices: Vec<i64> = items.iter().map(|i| i.unit_price_cents).collect();
        let qty: Vec<i32> = items.iter().map(|i| i.quantity).collect();
        let stock_params: [&(dyn ToSql + Sync); 2] = [&ids, &quantities];
        let order_params: [&(dyn ToSql + Sync); 7] = [
            &order_id,
            &self.merchant_id,
            &sequence,
            &self.request.customer_email,
            &self.request.customer_name,
            &total,
            &currency,
        ];
        let item_params: [&(dyn ToSql + Sync); 7] =
            [&order_id, &lines, &ids, &skus, &names, &prices, &qty];
        let (_, row, _, _) = futures_util::try_join!(
            tx.execute(&take_stock, &stock_params)
                .map_err(DbError::from),
            tx.query_one(&insert_order, &order_params)
                .map_err(DbError::from),
            tx.execute(&insert_items, &item_params)
                .map_err(DbError::from),
            enqueue(
                tx,
                self.merchant_id,
                for_order_event("order.created", order_id, has_webhook, "storefront"),
                self.max_attempts,
            ),
        )?;
        let number: i64 = row.get(0);

        let order = Order {
            id: order_id,
            number,
            status: OrderStatus::Pending.as_str().to_owned(),
            customer_email: self.request.customer_email.clone(),
            customer_name: self.request.customer_name.clone(),
            items,
            total_cents: total,
            currency,
            created_at: row.get(1),
            updated_at: row.get(2),
        };
        let body = serde_json::to_vec(&order).map_err(|e| DbError::Other(e.to_string()))?;
        if let Some(idem) = &self.idempotency {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO idempotency_keys (merchant_id, key, request_hash, response_status, response_body, location)
                     VALUES ($1, $2, $3, 201, $4, $5)",
                )
                .await?;
            tx.execute(
                &stmt,
                &[
                    &self.merchant_id,
                    &idem.key,
                    &idem.fingerprint,
                    &body,
                    &format!("/api/v1/orders/{order_id}"),
                ],
            )
            .await?;
        }
        Ok(CheckoutOutcome::Created {
            body,
            order_id,
            webhook: has_webhook,
        })
    }
}

impl DbCommand for Checkout {
    type Output = CheckoutOutcome;

    async fn run(self, conn: &mut Conn) -> Result<CheckoutOutcome, DbError> {
        in_transaction(conn, async |tx| {
            let outcome = self.attempt(tx).await?;
            let commit = matches!(outcome, CheckoutOutcome::Created { .. });
            Ok((outcome, commit))
        })
        .await
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
            .map(|r| Ok((r.get(10), r.get(11), Order::from_row(r)?)))
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
            Some((
                format!("SELECT count(*) FROM orders o WHERE {}", c.join(" AND ")),
                p,
            ))
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

    async fn run(self, conn: &mut Conn) -> Result<PageOf<Order>, DbError> {
        let sql = list_sql(&self.0)?;
        paging::fetch(conn, &self.0.page, sql, Order::from_row).await
    }
}

pub struct ChangeStatus {
    pub merchant_id: Uuid,
    pub id: Uuid,
    pub to: OrderStatus,
    pub max_attempts: i32,
}

#[derive(Debug)]
pub enum StatusOutcome {
    /// The order, and whether a webhook job was written.
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
                "SELECT o.status, m.webhook_url IS NOT NULL FROM orders o JOIN merchants m ON m.id = o.merchant_id
                 WHERE o.id = $1 AND o.merchant_id = $2 FOR UPDATE OF o",
            )
            .await?;
        let Some(row) = tx.query_opt(&stmt, &[&self.id, &self.merchant_id]).await? else {
            return Ok(StatusOutcome::NotFound);
        };
        let from: String = row.get(0);
        let has_webhook: bool = row.get(1);
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
        enqueue(
            tx,
            self.merchant_id,
            for_order_event(&event, self.id, has_webhook, "merchant"),
            self.max_attempts,
        )
        .await?;
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
