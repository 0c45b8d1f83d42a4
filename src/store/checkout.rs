//! The checkout transaction: the idempotency key claimed, the products locked in id order, the
//! stock taken, the order, its items and its jobs written, in one transaction.

use crate::domain::order::{CheckoutRequest, OrderStatus};
use crate::store::jobs::{enqueue, Outbox};
use crate::store::orders::{Order, OrderItem};
use crate::store::transaction::in_transaction;
use deadpool_postgres::Transaction;
use futures_util::TryFutureExt;
use rampart_actors::{Conn, DbCommand, DbError};
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: Vec<u8>,
}

pub struct Checkout {
    pub merchant_id: Uuid,
    pub request: CheckoutRequest,
    pub idempotency: Option<IdempotencyKey>,
    pub outbox: Outbox,
}

#[derive(Debug)]
pub enum CheckoutOutcome {
    /// The order, serialized once: the same bytes are what an idempotent replay returns.
    Created {
        body: Vec<u8>,
        order_id: Uuid,
        /// Whether a webhook job was written (the merchant has a URL).
        webhook: bool,
        /// Whether an SMS job was written (the customer gave a phone number).
        sms: bool,
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
                "INSERT INTO orders (id, merchant_id, number, customer_email, customer_name, total_cents, currency, customer_phone, created_at, updated_at)
                 VALUES ($1, $2, nextval($3::text::regclass), $4, $5, $6, $7, $8, clock_timestamp(), clock_timestamp())
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
        let order_params: [&(dyn ToSql + Sync); 8] = [
            &order_id,
            &self.merchant_id,
            &sequence,
            &self.request.customer_email,
            &self.request.customer_name,
            &total,
            &currency,
            &self.request.customer_phone,
        ];
        let sms = self.request.customer_phone.is_some();
        let mut jobs =
            (self.outbox.order_jobs)("order.created", order_id, has_webhook, "storefront", None);
        if sms {
            jobs.push((self.outbox.sms_job)("order.created", order_id));
        }
        let item_params: [&(dyn ToSql + Sync); 7] =
            [&order_id, &lines, &ids, &skus, &names, &prices, &qty];
        let (_, row, _, _) = futures_util::try_join!(
            tx.execute(&take_stock, &stock_params)
                .map_err(DbError::from),
            tx.query_one(&insert_order, &order_params)
                .map_err(DbError::from),
            tx.execute(&insert_items, &item_params)
                .map_err(DbError::from),
            enqueue(tx, self.merchant_id, jobs, self.outbox.default_attempts),
        )?;
        let number: i64 = row.get(0);

        let order = Order {
            id: order_id,
            number,
            status: OrderStatus::Pending.as_str().to_owned(),
            customer_email: self.request.customer_email.clone(),
            customer_name: self.request.customer_name.clone(),
            customer_phone: self.request.customer_phone.clone(),
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
            sms,
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
