//! What every list query shares: boxed SQL parameters, the keyset condition with the
//! LIMIT/OFFSET tail, the count of an offset page's list (bounded: never a whole large table),
//! and fetching a page with its count.

use crate::domain::listing::Page;
use rampart_actors::{Conn, DbError};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

pub type Param = Box<dyn ToSql + Sync + Send>;

/// A statement and its parameters.
pub type Sql = (String, Vec<Param>);

/// A list's page query and, for offset pages, its count query.
pub type ListSql = (String, Vec<Param>, Option<Sql>);

pub fn as_refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// For a keyset page after a position, adds `<row> > (key, id)` (`<` when descending) to the
/// conditions; returns the page's tail: one row more than the page (to know whether there is
/// more), or LIMIT/OFFSET. Both are bound parameters: the statement text, which is prepared and
/// cached per connection, must not vary with the page, or every page would leave a prepared
/// statement behind in the process and in each PostgreSQL backend.
pub fn page_tail(
    page: &Page,
    after_key: Option<Param>,
    row: &str,
    descending: bool,
    conditions: &mut Vec<String>,
    params: &mut Vec<Param>,
) -> String {
    match page {
        Page::Keyset { limit, after } => {
            if let (Some(pos), Some(key)) = (after, after_key) {
                params.push(key);
                params.push(Box::new(pos.id));
                let n = params.len();
                let cmp = if descending { "<" } else { ">" };
                conditions.push(format!("{row} {cmp} (${}, ${n})", n - 1));
            }
            params.push(Box::new(limit + 1));
            format!("LIMIT ${}", params.len())
        }
        Page::Offset { page, per_page, .. } => {
            params.push(Box::new(*per_page));
            params.push(Box::new((page - 1) * per_page));
            format!("LIMIT ${} OFFSET ${}", params.len() - 1, params.len())
        }
    }
}

/// For an offset page, the statement counting the rows of `FROM from WHERE conditions`, but
/// no more than one past the page's `count_up_to` (`pagination.max_total`): enough to tell an
/// exact total from "more than that" without reading a large table to its end. `None` for a
/// keyset page, which has no total. The bound is a parameter, so the statement text does not
/// vary with it.
pub fn count_sql(
    page: &Page,
    from: &str,
    conditions: &[String],
    mut params: Vec<Param>,
) -> Option<Sql> {
    match *page {
        Page::Offset { count_up_to, .. } => {
            params.push(Box::new(count_up_to.saturating_add(1)));
            let sql = format!(
                "SELECT count(*) FROM (SELECT 1 FROM {from} WHERE {} LIMIT ${}) AS counted",
                conditions.join(" AND "),
                params.len()
            );
            Some((sql, params))
        }
        Page::Keyset { .. } => None,
    }
}

/// The sort key after which a keyset page of a list sorted by time starts (`None`: the first
/// page, or an offset page).
pub fn time_after(page: &Page) -> Result<Option<Param>, DbError> {
    match page {
        Page::Keyset {
            after: Some(pos), ..
        } => match pos.key {
            crate::domain::listing::KeyValue::Time(t) => Ok(Some(Box::new(t))),
            _ => Err(DbError::Other("cursor does not match the sort".into())),
        },
        _ => Ok(None),
    }
}

pub struct PageOf<T> {
    pub rows: Vec<T>,
    pub has_more: bool,
    pub total: Option<i64>,
}

/// Runs a list's SQL: the rows of the page, whether more follow, and the total for offset pages
/// (counted up to one past the page's `count_up_to`).
pub async fn fetch<T>(
    client: &Conn,
    page: &Page,
    (sql, params, count): ListSql,
    map: impl Fn(&Row) -> Result<T, DbError>,
) -> Result<PageOf<T>, DbError> {
    let stmt = client.prepare_cached(&sql).await?;
    let mut rows = client
        .query(&stmt, &as_refs(&params))
        .await?
        .iter()
        .map(map)
        .collect::<Result<Vec<T>, _>>()?;
    let total = match count {
        Some((sql, params)) => {
            let stmt = client.prepare_cached(&sql).await?;
            Some(client.query_one(&stmt, &as_refs(&params)).await?.get(0))
        }
        None => None,
    };
    let has_more = match *page {
        Page::Keyset { limit, .. } => {
            let more = rows.len() as i64 > limit;
            rows.truncate(limit as usize);
            more
        }
        // A total past the count (not exact) leaves more rows than are known of.
        Page::Offset {
            page,
            per_page,
            count_up_to,
        } => total.is_some_and(|t| t > count_up_to || page.saturating_mul(per_page) < t),
    };
    Ok(PageOf {
        rows,
        has_more,
        total,
    })
}
