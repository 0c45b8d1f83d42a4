//! List requests: keyset pagination with signed cursors, or offset pagination with totals.
//!
//! A cursor carries the last row's sort key and id, plus what it is valid for (merchant, sort,
//! filters), signed with HMAC-SHA256: a tampered cursor, or one taken to another merchant, sort or
//! filter, is a 400.

use crate::error::ApiError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

/// The raw pagination parameters, as they come in the query string: keyset (`limit`, `cursor`)
/// or offset (`page`, `per_page`), never both (400).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Keyset page size, default 20.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page: opaque and signed (400 when tampered with or
    /// taken to another list, sort or filter).
    #[param(max_length = 1024)]
    pub cursor: Option<String>,
    /// Offset page number, from 1.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1_000_000)]
    pub page: Option<String>,
    /// Offset page size, default 20.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub per_page: Option<String>,
}

/// A sort key's value in a cursor (tagged: a name that looks like a date stays a name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KeyValue {
    Int(i64),
    Text(String),
    Time(DateTime<Utc>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// The sort key of the last row returned.
    pub key: KeyValue,
    pub id: Uuid,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Page {
    Keyset { limit: i64, after: Option<Position> },
    Offset { page: i64, per_page: i64 },
}

/// What a cursor is valid for: the same listing (scope + merchant), sort and filters.
#[derive(Debug, Clone)]
pub struct CursorScope {
    pub listing: &'static str,
    pub merchant_id: Uuid,
    pub sort: &'static str,
    pub filters: String,
}

impl CursorScope {
    fn digest(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.listing,
            &self.merchant_id.to_string(),
            self.sort,
            &self.filters,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..12])
    }
}

#[derive(Serialize, Deserialize)]
struct CursorBody {
    s: String,
    p: Position,
}

#[derive(Clone)]
pub struct CursorKey(Vec<u8>);

impl CursorKey {
    pub fn new(secret: &[u8]) -> Self {
        Self(Sha256::digest(secret).to_vec())
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(payload);
        mac
    }

    pub fn encode(&self, scope: &CursorScope, position: &Position) -> String {
        let body = CursorBody {
            s: scope.digest(),
            p: position.clone(),
        };
        let payload = serde_json::to_vec(&body).unwrap_or_default();
        let tag = self.mac(&payload).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(&tag[..16])
        )
    }

    pub fn decode(&self, scope: &CursorScope, cursor: &str) -> Result<Position, ApiError> {
        let bad = || ApiError::bad_field("cursor", "is not a cursor issued for this list");
        if cursor.len() > 1024 {
            return Err(bad());
        }
        let (payload, tag) = cursor.split_once('.').ok_or_else(bad)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| bad())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| bad())?;
        self.mac(&payload)
            .verify_truncated_left(&tag)
            .map_err(|_| bad())?;
        if tag.len() != 16 {
            return Err(bad());
        }
        let body: CursorBody = serde_json::from_slice(&payload).map_err(|_| bad())?;
        if body.s != scope.digest() {
            return Err(bad());
        }
        Ok(body.p)
    }
}

/// An optional integer query parameter within `range`; anything else is a 400 naming it.
pub fn int_param(
    field: &str,
    raw: &Option<String>,
    range: std::ops::RangeInclusive<i64>,
) -> Result<Option<i64>, ApiError> {
    match raw {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| range.contains(n))
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_field(
                    field,
                    format!(
                        "must be an integer from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )
            }),
    }
}

impl PageParams {
    /// Keyset unless `page` or `per_page` is given; mixing the two styles is a 400.
    pub fn parse(&self, key: &CursorKey, scope: &CursorScope) -> Result<Page, ApiError> {
        let offset_style = self.page.is_some() || self.per_page.is_some();
        if offset_style && (self.cursor.is_some() || self.limit.is_some()) {
            return Err(ApiError::bad_request(
                "use either limit/cursor or page/per_page, not both",
            ));
        }
        if offset_style {
            let page = int_param("page", &self.page, 1..=1_000_000)?.unwrap_or(1);
            let per_page =
                int_param("per_page", &self.per_page, 1..=MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT);
            return Ok(Page::Offset { page, per_page });
        }
        let limit = int_param("limit", &self.limit, 1..=MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT);
        let after = match &self.cursor {
            Some(c) => Some(key.decode(scope, c)?),
            None => None,
        };
        Ok(Page::Keyset { limit, after })
    }
}

/// One page of results and how to get the next.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Listing<T: Serialize> {
    Keyset {
        data: Vec<T>,
        next_cursor: Option<String>,
        has_more: bool,
    },
    Offset {
        data: Vec<T>,
        page: i64,
        per_page: i64,
        total: i64,
    },
}

/// A page of results as the API shows it (JSON), with a signed cursor to the next page.
pub fn listing_body<T: Serialize>(
    rows: Vec<T>,
    has_more: bool,
    total: Option<i64>,
    page: &Page,
    cursors: (&CursorKey, &CursorScope),
    position: impl Fn(&T) -> Position,
) -> Vec<u8> {
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
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(merchant: Uuid, sort: &'static str) -> CursorScope {
        CursorScope {
            listing: "products",
            merchant_id: merchant,
            sort,
            filters: String::new(),
        }
    }

    #[test]
    fn a_cursor_round_trips_and_refuses_tampering_and_other_scopes() {
        let key = CursorKey::new(b"secret");
        let m = Uuid::now_v7();
        let pos = Position {
            key: KeyValue::Int(1250),
            id: Uuid::now_v7(),
        };
        let cursor = key.encode(&scope(m, "price"), &pos);
        assert_eq!(key.decode(&scope(m, "price"), &cursor).unwrap(), pos);
        assert!(
            key.decode(&scope(m, "-price"), &cursor).is_err(),
            "another sort"
        );
        assert!(
            key.decode(&scope(Uuid::now_v7(), "price"), &cursor)
                .is_err(),
            "another merchant"
        );
        assert!(
            CursorKey::new(b"other")
                .decode(&scope(m, "price"), &cursor)
                .is_err(),
            "another key"
        );
        let mut tampered = cursor.clone().into_bytes();
        tampered[3] ^= 1;
        assert!(key
            .decode(&scope(m, "price"), &String::from_utf8_lossy(&tampered))
            .is_err());
        assert!(key.decode(&scope(m, "price"), "garbage").is_err());
    }

    #[test]
    fn limit_and_page_styles_cannot_mix_and_limits_are_bounded() {
        let key = CursorKey::new(b"k");
        let s = scope(Uuid::now_v7(), "x");
        let p = |limit: Option<&str>, page: Option<&str>| PageParams {
            limit: limit.map(str::to_owned),
            page: page.map(str::to_owned),
            ..Default::default()
        };
        assert!(p(Some("5"), Some("1")).parse(&key, &s).is_err());
        assert!(p(Some("0"), None).parse(&key, &s).is_err());
        assert!(p(Some("101"), None).parse(&key, &s).is_err());
        assert_eq!(
            p(None, None).parse(&key, &s).unwrap(),
            Page::Keyset {
                limit: 20,
                after: None
            }
        );
        assert_eq!(
            p(None, Some("3")).parse(&key, &s).unwrap(),
            Page::Offset {
                page: 3,
                per_page: 20
            }
        );
    }
}
