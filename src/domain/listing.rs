//! List requests: keyset pagination with signed cursors, or offset pagination with totals.
//!
//! Offset pages stop at a window (`pagination.max_offset`): a page whose first row lies that
//! deep or deeper is a 400 naming cursors as the way on, and `total` is counted only up to
//! `pagination.max_total`, so no request skips or counts a large table.
//!
//! A cursor carries the last row's sort key and id, plus what it is valid for (merchant, sort,
//! filters), signed with HMAC-SHA256: a tampered cursor, or one taken to another merchant, sort or
//! filter, is a 400.

use crate::error::ApiError;
use crate::settings::PaginationSettings;
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
    /// Offset page number, from 1. Offset pages stop at a window: a page whose first row,
    /// (page - 1) x per_page, lies `pagination.max_offset` rows deep (default 10,000) or deeper
    /// is 400; cursors are the way on.
    #[param(value_type = Option<i64>, minimum = 1)]
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
    Keyset {
        limit: i64,
        after: Option<Position>,
    },
    /// A page within the window, and how far its total is counted (`pagination.max_total`):
    /// a total above it is shown as this number, not exact.
    Offset {
        page: i64,
        per_page: i64,
        count_up_to: i64,
    },
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

/// The offset page `raw` names, checked against the window: its first row must lie less than
/// `max_offset` rows deep. Any page number of 1 or more is a number here, however large (a
/// page too deep for 64 bits is past the window too), so the answer is a 400 naming cursors,
/// never an overflow.
fn offset_page(raw: &Option<String>, per_page: i64, max_offset: u64) -> Result<i64, ApiError> {
    let Some(raw) = raw else { return Ok(1) };
    let raw = raw.trim();
    let page = match raw.parse::<u64>() {
        Ok(n) if n >= 1 => n,
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => u64::MAX,
        _ => {
            return Err(ApiError::bad_field(
                "page",
                "must be an integer of 1 or more",
            ))
        }
    };
    let within = (page - 1)
        .checked_mul(per_page.unsigned_abs())
        .filter(|offset| *offset < max_offset)
        .and_then(|offset| i64::try_from(offset).ok())
        .and_then(|_| i64::try_from(page).ok());
    within.ok_or_else(|| {
        ApiError::bad_field(
            "page",
            format!(
                "offset pages stop at {max_offset} rows; follow next_cursor (?cursor=) to go \
                 further"
            ),
        )
    })
}

impl PageParams {
    /// Keyset unless `page` or `per_page` is given; mixing the two styles is a 400, and so is
    /// an offset page past `window.max_offset`.
    pub fn parse(
        &self,
        key: &CursorKey,
        scope: &CursorScope,
        window: &PaginationSettings,
    ) -> Result<Page, ApiError> {
        let offset_style = self.page.is_some() || self.per_page.is_some();
        if offset_style && (self.cursor.is_some() || self.limit.is_some()) {
            return Err(ApiError::bad_request(
                "use either limit/cursor or page/per_page, not both",
            ));
        }
        if offset_style {
            let per_page =
                int_param("per_page", &self.per_page, 1..=MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT);
            let page = offset_page(&self.page, per_page, window.max_offset)?;
            return Ok(Page::Offset {
                page,
                per_page,
                count_up_to: i64::try_from(window.max_total).unwrap_or(i64::MAX),
            });
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
        /// Exact up to `pagination.max_total` rows (default 10,000); beyond it, that number.
        total: i64,
        /// Whether `total` is the exact count (false: there are more than `total` rows).
        total_exact: bool,
    },
}

/// A page of results as the API shows it (JSON), with a signed cursor to the next page; an
/// offset page's total is counted up to its `count_up_to` (more than that: not exact).
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
        Page::Offset {
            page,
            per_page,
            count_up_to,
        } => {
            let counted = total.unwrap_or(0);
            Listing::Offset {
                data: rows,
                page,
                per_page,
                total: counted.min(count_up_to),
                total_exact: counted <= count_up_to,
            }
        }
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

    fn window(max_offset: u64, max_total: u64) -> PaginationSettings {
        PaginationSettings {
            max_offset,
            max_total,
        }
    }

    #[test]
    fn limit_and_page_styles_cannot_mix_and_limits_are_bounded() {
        let key = CursorKey::new(b"k");
        let s = scope(Uuid::now_v7(), "x");
        let w = window(10_000, 10_000);
        let p = |limit: Option<&str>, page: Option<&str>| PageParams {
            limit: limit.map(str::to_owned),
            page: page.map(str::to_owned),
            ..Default::default()
        };
        assert!(p(Some("5"), Some("1")).parse(&key, &s, &w).is_err());
        assert!(p(Some("0"), None).parse(&key, &s, &w).is_err());
        assert!(p(Some("101"), None).parse(&key, &s, &w).is_err());
        assert_eq!(
            p(None, None).parse(&key, &s, &w).unwrap(),
            Page::Keyset {
                limit: 20,
                after: None
            }
        );
        assert_eq!(
            p(None, Some("3")).parse(&key, &s, &w).unwrap(),
            Page::Offset {
                page: 3,
                per_page: 20,
                count_up_to: 10_000,
            }
        );
    }

    #[test]
    fn offset_pages_stop_at_the_window_and_huge_page_numbers_are_past_it() {
        let key = CursorKey::new(b"k");
        let s = scope(Uuid::now_v7(), "x");
        let w = window(100, 7);
        let p = |page: &str, per_page: &str| PageParams {
            page: Some(page.to_owned()),
            per_page: Some(per_page.to_owned()),
            ..Default::default()
        };
        // Rows 90..99: the last page inside the window.
        assert_eq!(
            p("10", "10").parse(&key, &s, &w).unwrap(),
            Page::Offset {
                page: 10,
                per_page: 10,
                count_up_to: 7,
            }
        );
        assert!(p("100", "1").parse(&key, &s, &w).is_ok());
        for (page, per_page) in [
            ("11", "10"),
            ("101", "1"),
            ("9223372036854775807", "100"),
            ("9223372036854775808", "2"),
            ("18446744073709551615", "100"),
            ("99999999999999999999999999", "1"),
        ] {
            match p(page, per_page).parse(&key, &s, &w) {
                Err(ApiError::BadRequest { detail, errors }) => {
                    assert!(detail.contains("next_cursor"), "{page}: {detail}");
                    assert_eq!(errors[0].field, "page");
                }
                other => panic!("{page}x{per_page}: {other:?}"),
            }
        }
        for bad in ["0", "-1", "abc", "1.5", ""] {
            assert!(p(bad, "10").parse(&key, &s, &w).is_err(), "{bad}");
        }
        // A window as large as the type: no overflow either.
        let wide = window(u64::MAX, u64::MAX);
        assert!(p("18446744073709551615", "100")
            .parse(&key, &s, &wide)
            .is_err());
        assert_eq!(
            p("2", "100").parse(&key, &s, &wide).unwrap(),
            Page::Offset {
                page: 2,
                per_page: 100,
                count_up_to: i64::MAX,
            }
        );
    }

    #[test]
    fn an_offset_total_past_its_count_is_shown_as_the_count_and_not_exact() {
        let key = CursorKey::new(b"k");
        let s = scope(Uuid::now_v7(), "x");
        let page = Page::Offset {
            page: 1,
            per_page: 2,
            count_up_to: 5,
        };
        let body = |counted: i64| -> serde_json::Value {
            let bytes = listing_body(vec![1, 2], true, Some(counted), &page, (&key, &s), |_| {
                Position {
                    key: KeyValue::Int(0),
                    id: Uuid::nil(),
                }
            });
            serde_json::from_slice(&bytes).unwrap()
        };
        assert_eq!(
            body(6),
            serde_json::json!({"data": [1, 2], "page": 1, "per_page": 2, "total": 5, "total_exact": false})
        );
        assert_eq!(body(5)["total_exact"], true);
        assert_eq!(body(3)["total"], 3);
    }
}
