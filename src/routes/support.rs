//! What several handlers share: path ids, entity tags, pages of results.

use crate::domain::listing::{CursorKey, CursorScope, Listing, Position};
use crate::error::ApiError;
use actix_web::http::header::{self, HeaderMap};
use actix_web::HttpResponse;
use serde::Serialize;
use uuid::Uuid;

/// A path id: anything that is not a UUID names nothing here.
pub fn path_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound)
}

fn tags(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(|t| t.trim().trim_start_matches("W/"))
}

/// `If-None-Match` names the current tag (or `*`): the client's copy is fresh.
pub fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| tags(v).any(|t| t == "*" || t == etag))
}

/// The version `If-Match` requires: `None` without the header or with `*`; a tag that is not
/// one of ours can match nothing, so it fails the precondition.
pub fn if_match_version(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| ApiError::PreconditionFailed)?;
    if value.trim() == "*" {
        return Ok(None);
    }
    let first = tags(value).next().unwrap_or("");
    first
        .strip_prefix("\"v")
        .and_then(|t| t.strip_suffix('"'))
        .and_then(|n| n.parse::<i64>().ok())
        .map(Some)
        .ok_or(ApiError::PreconditionFailed)
}

/// A page of results as the API shows it, with a signed cursor to the next page.
pub fn listing<T: Serialize>(
    rows: Vec<T>,
    has_more: bool,
    total: Option<i64>,
    page: &crate::domain::listing::Page,
    cursors: (&CursorKey, &CursorScope),
    position: impl Fn(&T) -> Position,
) -> HttpResponse {
    use crate::domain::listing::Page;
    let body = match *page {
        Page::Keyset { .. } => {
            let next_cursor = if has_more {
                rows.last()
                    .map(|r| cursors.0.encode(cursors.1, &position(r)))
            } else {
                None
            };
            Listing::Keyset {
                data: rows,
                next_cursor,
                has_more,
            }
        }
        Page::Offset { page, per_page } => Listing::Offset {
            data: rows,
            page,
            per_page,
            total: total.unwrap_or(0),
        },
    };
    HttpResponse::Ok().json(body)
}
