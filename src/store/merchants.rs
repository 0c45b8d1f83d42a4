//! Merchants: creation (with their order-number sequence) and API-key lookup.

use crate::domain::merchant::{new_webhook_secret, NewApiKey, NewMerchant};
use crate::store::audit::Changes;
use crate::store::jobs::{enqueue, Outbox};
use crate::store::transaction::in_transaction;
use chrono::{DateTime, Utc};
use rampart_actors::{commit, Conn, Db, DbCommand, DbError, Handle};
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Merchant {
    pub id: Uuid,
    pub name: String,
    pub webhook_url: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// What creation returns: the only time the key and the secret are shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedMerchant {
    pub merchant: Merchant,
    pub api_key: String,
    pub webhook_secret: String,
}

struct InsertMerchant {
    id: Uuid,
    name: String,
    webhook_url: Option<String>,
    webhook_secret: String,
    key_hash: Vec<u8>,
    key_prefix: String,
}

impl DbCommand for InsertMerchant {
    type Output = Merchant;

    async fn run(self, conn: &mut Conn) -> Result<Merchant, DbError> {
        let sequence = format!("order_numbers_{}", self.id.simple());
        let caller = conn.caller().clone();
        let tx = conn.begin().await?;
        tx.batch_execute(&format!(
            "CREATE SEQUENCE {sequence} AS bigint START 1 CACHE 1"
        ))
        .await?;
        let row = tx
            .query_one(
                "INSERT INTO merchants (id, name, webhook_url, webhook_secret, api_key_hash, api_key_prefix, order_sequence)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING created_at",
                &[&self.id, &self.name, &self.webhook_url, &self.webhook_secret, &self.key_hash, &self.key_prefix, &sequence],
            )
            .await?;
        commit(tx, &caller).await?;
        Ok(Merchant {
            id: self.id,
            name: self.name,
            webhook_url: self.webhook_url,
            created_at: row.get(0),
        })
    }
}

pub async fn create(db: &Handle<Db>, input: NewMerchant) -> Result<CreatedMerchant, DbError> {
    let key = NewApiKey::generate();
    let webhook_secret = new_webhook_secret();
    let merchant = db
        .run(InsertMerchant {
            id: Uuid::now_v7(),
            name: input.name.as_str().to_owned(),
            webhook_url: input.webhook_url.map(|u| u.as_str().to_owned()),
            webhook_secret: webhook_secret.clone(),
            key_hash: key.hash,
            key_prefix: key.prefix,
        })
        .await?;
    Ok(CreatedMerchant {
        merchant,
        api_key: key.plain,
        webhook_secret,
    })
}

/// The merchant holding the API key with this hash.
pub struct FindByKey(pub Vec<u8>);

impl DbCommand for FindByKey {
    type Output = Option<Uuid>;

    async fn run(self, client: &mut Conn) -> Result<Option<Uuid>, DbError> {
        let stmt = client
            .prepare_cached("SELECT id FROM merchants WHERE api_key_hash = $1")
            .await?;
        Ok(client.query_opt(&stmt, &[&self.0]).await?.map(|r| r.get(0)))
    }
}

pub struct Count;

impl DbCommand for Count {
    type Output = i64;

    async fn run(self, client: &mut Conn) -> Result<i64, DbError> {
        Ok(client
            .query_one("SELECT count(*) FROM merchants", &[])
            .await?
            .get(0))
    }
}

#[derive(Clone, Copy)]
pub struct Exists(pub Uuid);

impl DbCommand for Exists {
    type Output = bool;

    async fn run(self, client: &mut Conn) -> Result<bool, DbError> {
        let stmt = client
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM merchants WHERE id = $1)")
            .await?;
        Ok(client.query_one(&stmt, &[&self.0]).await?.get(0))
    }
}

/// `PUT /api/v1/merchant`: a new name and/or webhook URL (`Some(None)` removes the URL), with
/// its audit job, in one transaction.
pub struct Update {
    pub merchant_id: Uuid,
    pub name: Option<String>,
    pub webhook_url: Option<Option<String>>,
    pub outbox: Outbox,
}

impl DbCommand for Update {
    type Output = Option<Merchant>;

    async fn run(self, conn: &mut Conn) -> Result<Option<Merchant>, DbError> {
        in_transaction(conn, async |tx| {
            // The row locked first, so its old values are the ones this update replaces.
            let row = tx
                .query_opt(
                    "WITH old AS (SELECT id, name, webhook_url FROM merchants WHERE id = $1 FOR NO KEY UPDATE)
                     UPDATE merchants m SET name = coalesce($2, m.name),
                        webhook_url = CASE WHEN $3 THEN $4 ELSE m.webhook_url END, updated_at = now()
                     FROM old WHERE m.id = old.id
                     RETURNING m.id, m.name, m.webhook_url, m.created_at, old.name, old.webhook_url",
                    &[
                        &self.merchant_id,
                        &self.name,
                        &self.webhook_url.is_some(),
                        &self.webhook_url.clone().flatten(),
                    ],
                )
                .await?;
            let Some(row) = row else {
                return Ok((None, false));
            };
            let merchant = Merchant {
                id: row.get(0),
                name: row.get(1),
                webhook_url: row.get(2),
                created_at: row.get(3),
            };
            let (old_name, old_url): (String, Option<String>) = (row.get(4), row.get(5));
            let changes = Changes::new()
                .field("name", &old_name, &merchant.name)
                .field("webhook_url", &old_url, &merchant.webhook_url);
            let audit = (self.outbox.audit_job)(
                "merchant.updated",
                "merchant",
                "merchant",
                &self.merchant_id.to_string(),
                Some(changes.into_value()),
            );
            enqueue(
                tx,
                self.merchant_id,
                vec![audit],
                self.outbox.default_attempts,
            )
            .await?;
            Ok((Some(merchant), true))
        })
        .await
    }
}
