//! Products: create, read, patch, archive, stock deltas, and the list queries of the catalog
//! and the storefront (one SQL builder for both, so tests can `EXPLAIN` exactly what runs).

use crate::domain::listing::{KeyValue, Page, Position};
use crate::domain::product::{NewProduct, ProductFilter, ProductPatch, Sort};
use crate::store::audit::Changes;
use crate::store::jobs::{enqueue, Outbox};
use crate::store::paging::{self, page_tail, ListSql, PageOf, Param};
use crate::store::transaction::in_transaction;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use rampart_actors::{Conn, DbCommand, DbError};
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

pub const COLUMNS: &str = "id, sku, name, description, price_cents, currency, stock, category, status, version, created_at, updated_at";

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Product {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub description: Option<String>,
    pub price_cents: i64,
    pub currency: String,
    pub stock: i64,
    pub category: Option<String>,
    /// `active` or `archived`.
    pub status: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Product {
    pub fn from_row(row: &Row) -> Self {
        Self::from_row_at(row, 0)
    }

    /// The product whose [`COLUMNS`] start at column `at`.
    fn from_row_at(row: &Row, at: usize) -> Self {
        Self {
            id: row.get(at),
            sku: row.get(at + 1),
            name: row.get(at + 2),
            description: row.get(at + 3),
            price_cents: row.get(at + 4),
            currency: row.get(at + 5),
            stock: row.get(at + 6),
            category: row.get(at + 7),
            status: row.get(at + 8),
            version: row.get(at + 9),
            created_at: row.get(at + 10),
            updated_at: row.get(at + 11),
        }
    }

    /// The fields a merchant sets that differ from `old`'s, for the audit trail.
    fn changes_since(&self, old: &Product) -> Changes {
        Changes::new()
            .field("sku", &old.sku, &self.sku)
            .field("name", &old.name, &self.name)
            .field("description", &old.description, &self.description)
            .field("price_cents", &old.price_cents, &self.price_cents)
            .field("currency", &old.currency, &self.currency)
            .field("stock", &old.stock, &self.stock)
            .field("category", &old.category, &self.category)
            .field("status", &old.status, &self.status)
    }

    /// The strong entity tag: the version changes with every write, stock included.
    pub fn etag(&self) -> String {
        format!("\"v{}\"", self.version)
    }

    pub fn position(&self, sort: Sort) -> Position {
        let key = match sort {
            Sort::CreatedAsc | Sort::CreatedDesc => KeyValue::Time(self.created_at),
            Sort::PriceAsc | Sort::PriceDesc => KeyValue::Int(self.price_cents),
            Sort::NameAsc | Sort::NameDesc => KeyValue::Text(self.name.clone()),
        };
        Position { key, id: self.id }
    }
}

/// The audit job of a catalog change by the merchant, written in the change's transaction.
async fn audit(
    client: &deadpool_postgres::Transaction<'_>,
    outbox: &Outbox,
    merchant_id: Uuid,
    action: &str,
    product_id: Uuid,
    changes: Option<Changes>,
) -> Result<(), DbError> {
    let job = (outbox.audit_job)(
        action,
        "merchant",
        "product",
        &product_id.to_string(),
        changes.map(Changes::into_value),
    );
    enqueue(client, merchant_id, vec![job], outbox.default_attempts).await?;
    Ok(())
}

/// A new product, with its audit job (`product.created`).
pub struct Insert {
    pub merchant_id: Uuid,
    pub product: NewProduct,
    pub outbox: Outbox,
}

impl DbCommand for Insert {
    type Output = Product;

    async fn run(self, conn: &mut Conn) -> Result<Product, DbError> {
        let p = &self.product;
        let id = Uuid::now_v7();
        in_transaction(conn, async |client| {
        let stmt = client
            .prepare_cached(&format!(
                "INSERT INTO products (id, merchant_id, sku, name, description, price_cents, currency, stock, category)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
            ))
            .await?;
        let row = client
            .query_one(
                &stmt,
                &[
                    &id,
                    &self.merchant_id,
                    &p.sku,
                    &p.name,
                    &p.description,
                    &p.price_cents,
                    &p.currency,
                    &p.stock,
                    &p.category,
                ],
            )
            .await?;
        audit(client, &self.outbox, self.merchant_id, "product.created", id, None)
            .await?;
        Ok((Product::from_row(&row), true))
        })
        .await
    }
}

/// One product of one merchant; with `active_only`, archived ones are not found.
#[derive(Clone)]
pub struct Get {
    pub merchant_id: Uuid,
    pub id: Uuid,
    pub active_only: bool,
}

impl DbCommand for Get {
    type Output = Option<Product>;

    fn rows(output: &Option<Product>) -> Option<usize> {
        Some(usize::from(output.is_some()))
    }

    async fn run(self, conn: &mut Conn) -> Result<Option<Product>, DbError> {
        let client = &**conn;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM products WHERE id = $1 AND merchant_id = $2 AND (NOT $3 OR status = 'active')"
            ))
            .await?;
        Ok(client
            .query_opt(&stmt, &[&self.id, &self.merchant_id, &self.active_only])
            .await?
            .as_ref()
            .map(Product::from_row))
    }
}

#[derive(Debug)]
pub enum Write {
    Done(Box<Product>),
    NotFound,
    /// `If-Match` named another version.
    Stale,
    /// The stock would go below zero.
    Insufficient,
}

async fn exists(client: &impl GenericClient, merchant_id: Uuid, id: Uuid) -> Result<bool, DbError> {
    let stmt = client
        .prepare_cached("SELECT 1 FROM products WHERE id = $1 AND merchant_id = $2")
        .await?;
    Ok(client
        .query_opt(&stmt, &[&id, &merchant_id])
        .await?
        .is_some())
}

/// A patch, with its audit job (`product.updated`, the fields it changed).
pub struct Update {
    pub merchant_id: Uuid,
    pub id: Uuid,
    pub patch: ProductPatch,
    /// `If-Match`: the write happens only at one of these versions (`None`: any).
    pub if_versions: Option<Vec<i64>>,
    pub outbox: Outbox,
}

/// [`COLUMNS`] of the table named `alias`.
fn columns_of(alias: &str) -> String {
    COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl DbCommand for Update {
    type Output = Write;

    async fn run(self, conn: &mut Conn) -> Result<Write, DbError> {
        let p = &self.patch;
        in_transaction(conn, async |client| {
        // The row is locked first (`old`), so its old values are the ones this update replaces.
        let stmt = client
            .prepare_cached(&format!(
                "WITH old AS (SELECT {COLUMNS} FROM products WHERE id = $1 AND merchant_id = $2 FOR NO KEY UPDATE)
                 UPDATE products p SET
                    sku = coalesce($3, p.sku), name = coalesce($4, p.name),
                    description = CASE WHEN $5 THEN $6 ELSE p.description END,
                    price_cents = coalesce($7, p.price_cents), currency = coalesce($8, p.currency),
                    stock = coalesce($9, p.stock),
                    category = CASE WHEN $10 THEN $11 ELSE p.category END,
                    status = coalesce($12, p.status),
                    version = p.version + 1, updated_at = now()
                 FROM old
                 WHERE p.id = old.id AND ($13::bigint[] IS NULL OR p.version = ANY($13))
                 RETURNING {}, {}",
                columns_of("p"),
                columns_of("old"),
            ))
            .await?;
        let description = p.description.clone().flatten();
        let category = p.category.clone().flatten();
        let row = client
            .query_opt(
                &stmt,
                &[
                    &self.id,
                    &self.merchant_id,
                    &p.sku,
                    &p.name,
                    &p.description.is_some(),
                    &description,
                    &p.price_cents,
                    &p.currency,
                    &p.stock,
                    &p.category.is_some(),
                    &category,
                    &p.status,
                    &self.if_versions,
                ],
            )
            .await?;
        Ok(match row {
            Some(row) => {
                let new = Product::from_row(&row);
                let old = Product::from_row_at(&row, COLUMNS.split(", ").count());
                let changes = Some(new.changes_since(&old));
                audit(client, &self.outbox, self.merchant_id, "product.updated", self.id, changes)
                    .await?;
                (Write::Done(Box::new(new)), true)
            }
            None if exists(client, self.merchant_id, self.id).await? => (Write::Stale, false),
            None => (Write::NotFound, false),
        })
        })
        .await
    }
}

/// Archives a product (found: `true`), with its audit job (`product.archived`) when it was
/// active; archiving an archived product changes nothing.
pub struct Archive {
    pub merchant_id: Uuid,
    pub id: Uuid,
    pub outbox: Outbox,
}

impl DbCommand for Archive {
    type Output = bool;

    async fn run(self, conn: &mut Conn) -> Result<bool, DbError> {
        in_transaction(conn, async |client| {
            let stmt = client
                .prepare_cached(
                    "WITH old AS (SELECT id, status FROM products WHERE id = $1 AND merchant_id = $2 FOR NO KEY UPDATE)
                 UPDATE products p SET status = 'archived',
                    version = p.version + CASE WHEN p.status = 'archived' THEN 0 ELSE 1 END,
                    updated_at = CASE WHEN p.status = 'archived' THEN p.updated_at ELSE now() END
                 FROM old WHERE p.id = old.id RETURNING old.status",
                )
                .await?;
            let Some(row) = client
                .query_opt(&stmt, &[&self.id, &self.merchant_id])
                .await?
            else {
                return Ok((false, false));
            };
            let old: String = row.get(0);
            if old != "archived" {
                let changes = Some(Changes::new().field("status", &old, &"archived".to_owned()));
                let action = "product.archived";
                audit(client, &self.outbox, self.merchant_id, action, self.id, changes).await?;
            }
            Ok((true, true))
        })
        .await
    }
}

/// A stock delta, with its audit job (`product.stock_adjusted`, the stock's old and new value).
pub struct AdjustStock {
    pub merchant_id: Uuid,
    pub id: Uuid,
    pub delta: i64,
    pub outbox: Outbox,
}

impl DbCommand for AdjustStock {
    type Output = Write;

    async fn run(self, conn: &mut Conn) -> Result<Write, DbError> {
        in_transaction(conn, async |client| {
            let stmt = client
                .prepare_cached(&format!(
                "UPDATE products SET stock = stock + $3, version = version + 1, updated_at = now()
                 WHERE id = $1 AND merchant_id = $2 AND stock + $3 >= 0 RETURNING {COLUMNS}"
            ))
                .await?;
            let row = client
                .query_opt(&stmt, &[&self.id, &self.merchant_id, &self.delta])
                .await?;
            Ok(match row {
                Some(row) => {
                    let product = Product::from_row(&row);
                    let old = product.stock - self.delta;
                    let changes = Some(Changes::new().field("stock", &old, &product.stock));
                    let action = "product.stock_adjusted";
                    audit(
                        client,
                        &self.outbox,
                        self.merchant_id,
                        action,
                        self.id,
                        changes,
                    )
                    .await?;
                    (Write::Done(Box::new(product)), true)
                }
                None if exists(client, self.merchant_id, self.id).await? => {
                    (Write::Insufficient, false)
                }
                None => (Write::NotFound, false),
            })
        })
        .await
    }
}

/// A product list request: whose, which rows, in what order, which page.
#[derive(Debug, Clone)]
pub struct ProductQuery {
    pub merchant_id: Uuid,
    pub storefront: bool,
    pub filter: ProductFilter,
    pub sort: Sort,
    pub page: Page,
}

/// The WHERE conditions of a list and their parameters ($1 is the merchant).
fn filters(q: &ProductQuery) -> (Vec<String>, Vec<Param>) {
    let mut params: Vec<Param> = vec![Box::new(q.merchant_id)];
    let mut conditions = vec!["merchant_id = $1".to_owned()];
    if q.storefront {
        // A literal, so the partial indexes of active products apply.
        conditions.push("status = 'active'".to_owned());
    }
    let f = &q.filter;
    let mut push = |cond: &str, param: Param| {
        params.push(param);
        conditions.push(cond.replace('?', &format!("${}", params.len())));
    };
    if let Some(s) = &f.status {
        push("status = ?", Box::new(s.clone()));
    }
    if let Some(c) = &f.category {
        push("category = ?", Box::new(c.clone()));
    }
    if let Some(text) = &f.q {
        push(
            "search @@ plainto_tsquery('simple', ?)",
            Box::new(text.clone()),
        );
    }
    if let Some(lo) = f.min_price {
        push("price_cents >= ?", Box::new(lo));
    }
    if let Some(hi) = f.max_price {
        push("price_cents <= ?", Box::new(hi));
    }
    (conditions, params)
}

/// The SQL the list runs: the page query (one row more than the page, to know if there is more)
/// and, for offset pages, the count (up to one past `pagination.max_total`).
pub fn list_sql(q: &ProductQuery) -> Result<ListSql, DbError> {
    let (mut conditions, mut params) = filters(q);
    let count = match q.page {
        Page::Offset { .. } => {
            let (conditions, params) = filters(q);
            paging::count_sql(&q.page, "products", &conditions, params)
        }
        Page::Keyset { .. } => None,
    };
    let column = q.sort.column();
    let dir = if q.sort.descending() { "DESC" } else { "ASC" };
    let after_key: Option<Param> = match &q.page {
        Page::Keyset {
            after: Some(pos), ..
        } => Some(match (&pos.key, q.sort) {
            (KeyValue::Time(t), Sort::CreatedAsc | Sort::CreatedDesc) => Box::new(*t),
            (KeyValue::Int(n), Sort::PriceAsc | Sort::PriceDesc) => Box::new(*n),
            (KeyValue::Text(s), Sort::NameAsc | Sort::NameDesc) => Box::new(s.clone()),
            _ => return Err(DbError::Other("cursor does not match the sort".into())),
        }),
        _ => None,
    };
    let tail = page_tail(
        &q.page,
        after_key,
        &format!("({column}, id)"),
        q.sort.descending(),
        &mut conditions,
        &mut params,
    );
    let sql = format!(
        "SELECT {COLUMNS} FROM products WHERE {} ORDER BY {column} {dir}, id {dir} {tail}",
        conditions.join(" AND ")
    );
    Ok((sql, params, count))
}

#[derive(Clone)]
pub struct List(pub ProductQuery);

impl DbCommand for List {
    type Output = PageOf<Product>;

    fn rows(output: &PageOf<Product>) -> Option<usize> {
        Some(output.rows.len())
    }

    async fn run(self, conn: &mut Conn) -> Result<PageOf<Product>, DbError> {
        let sql = list_sql(&self.0)?;
        paging::fetch(conn, &self.0.page, sql, |row| Ok(Product::from_row(row))).await
    }
}
