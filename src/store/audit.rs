//! The merchant's audit trail, newest first, written by the `audit` jobs.

use crate::domain::listing::{KeyValue, Page, Position};
use crate::store::paging::{self, page_tail, ListSql, PageOf, Param};
use chrono::{DateTime, Utc};
use rampart_actors::{Conn, DbCommand, DbError};
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

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
        "SELECT a.id, a.actor, a.action, a.entity_type, a.entity_id, a.at FROM audit_log a
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
