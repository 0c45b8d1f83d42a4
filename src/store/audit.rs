//! The merchant's audit trail, newest first, written by the `audit` jobs, and what an update
//! hands its audit job: the fields it changed ([`Changes`]).

use crate::domain::listing::{KeyValue, Page, Position};
use crate::store::paging::{self, page_tail, ListSql, PageOf, Param};
use chrono::{DateTime, Utc};
use rampart_actors::{Conn, DbCommand, DbError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use tokio_postgres::Row;
use uuid::Uuid;

/// One field an update changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Change {
    /// Its value before (`null` when it had none).
    pub old: Value,
    /// Its value after (`null` when it has none).
    pub new: Value,
}

/// The fields an update changed, by name: those whose old and new values differ.
#[derive(Debug, Default)]
pub struct Changes(BTreeMap<String, Change>);

impl Changes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `name` when `old` and `new` differ.
    pub fn field<T: Serialize + PartialEq>(mut self, name: &str, old: &T, new: &T) -> Self {
        if old != new {
            self.0.insert(
                name.to_owned(),
                Change {
                    old: serde_json::to_value(old).unwrap_or(Value::Null),
                    new: serde_json::to_value(new).unwrap_or(Value::Null),
                },
            );
        }
        self
    }

    /// As the audit job carries it: `{"field": {"old": ..., "new": ...}}`.
    pub fn into_value(self) -> Value {
        serde_json::to_value(self.0).unwrap_or(Value::Null)
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: Uuid,
    /// Who: `merchant`, `storefront`, `admin`.
    pub actor: String,
    /// What: `order.created`, `order.paid`, `merchant.updated`, `report.requested`...
    pub action: String,
    pub entity_type: String,
    pub entity_id: String,
    /// When the change was committed.
    pub at: DateTime<Utc>,
    /// The fields an update changed, each with its old and new value; `null` where it does not
    /// apply (a creation, a checkout, an order event, a report request).
    pub changes: Option<BTreeMap<String, Change>>,
}

impl AuditEntry {
    fn from_row(r: &Row) -> Result<Self, DbError> {
        Ok(Self {
            id: r.get(0),
            actor: r.get(1),
            action: r.get(2),
            entity_type: r.get(3),
            entity_id: r.get(4),
            at: r.get(5),
            changes: r
                .get::<_, Option<Value>>(6)
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| DbError::Other(format!("audit entry changes: {e}")))?,
        })
    }

    pub fn position(&self) -> Position {
        Position {
            key: KeyValue::Time(self.at),
            id: self.id,
        }
    }
}

pub struct List {
    pub merchant_id: Uuid,
    pub page: Page,
}

fn list_sql(q: &List) -> Result<ListSql, DbError> {
    let mut conditions = vec!["a.merchant_id = $1".to_owned()];
    let mut params: Vec<Param> = vec![Box::new(q.merchant_id)];
    let count = paging::count_sql(
        &q.page,
        "audit_log a",
        &conditions,
        vec![Box::new(q.merchant_id) as Param],
    );
    let after_key = paging::time_after(&q.page)?;
    let tail = page_tail(
        &q.page,
        after_key,
        "(a.at, a.id)",
        true,
        &mut conditions,
        &mut params,
    );
    let sql = format!(
        "SELECT a.id, a.actor, a.action, a.entity_type, a.entity_id, a.at, a.changes FROM audit_log a
         WHERE {} ORDER BY a.at DESC, a.id DESC {tail}",
        conditions.join(" AND ")
    );
    Ok((sql, params, count))
}

impl DbCommand for List {
    type Output = PageOf<AuditEntry>;

    async fn run(self, conn: &mut Conn) -> Result<PageOf<AuditEntry>, DbError> {
        let sql = list_sql(&self)?;
        paging::fetch(conn, &self.page, sql, AuditEntry::from_row).await
    }
}
