//! Checkout input and the order state machine.

use crate::error::{ApiError, FieldError};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use uuid::Uuid;

pub const MAX_ITEMS: usize = 50;
pub const MAX_QUANTITY: i64 = 1000;

/// A checkout: 1 to 50 items of one currency; repeated products are merged into one line (at
/// most 1,000 units of a product in all).
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    #[schema(
        max_length = 254,
        pattern = r"^[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
    )]
    pub customer_email: String,
    #[serde(default)]
    #[schema(
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$",
        nullable
    )]
    pub customer_name: Option<String>,
    /// E.164 (`+`, then 8 to 15 digits, the first not 0): when given, the customer also gets
    /// SMS about the order.
    // Not serialized when absent: a request without it keeps the fingerprint it had before the
    // field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        example = "+4915112345678",
        pattern = r"^\+[1-9][0-9]{7,14}$",
        nullable
    )]
    pub customer_phone: Option<String>,
    #[schema(min_items = 1, max_items = 50)]
    pub items: Vec<ItemBody>,
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemBody {
    pub product_id: Uuid,
    #[serde(deserialize_with = "crate::domain::integer::integer")]
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i64,
}

/// One order line after merging repeated products; `index` is the first request item it came from.
#[derive(Debug, Clone)]
pub struct Line {
    pub product_id: Uuid,
    pub quantity: i64,
    pub index: usize,
}

#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    pub customer_email: String,
    pub customer_name: Option<String>,
    pub customer_phone: Option<String>,
    pub lines: Vec<Line>,
    /// A digest of the request's meaning, for idempotent replays.
    pub fingerprint: Vec<u8>,
}

/// An email address of the documented shape: an ASCII local part of letters, digits and
/// `._%+-` (1 to 64), `@`, and a domain of two or more labels (letters, digits, inner hyphens,
/// 1 to 63 each); 254 characters at most.
pub fn email(field: &str, raw: &str) -> Result<String, FieldError> {
    let bad = || FieldError::new(field, "must be an email address");
    if raw.len() > 254 {
        return Err(bad());
    }
    let (local, domain) = raw.split_once('@').ok_or_else(bad)?;
    let local_ok = (1..=64).contains(&local.len())
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._%+-".contains(&b));
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let labels: Vec<&str> = domain.split('.').collect();
    if !local_ok || labels.len() < 2 || !labels.iter().all(|l| label_ok(l)) {
        return Err(bad());
    }
    Ok(raw.to_owned())
}

/// A phone number in E.164 form: `+`, then 8 to 15 ASCII digits, the first not 0 (the country
/// code never starts with 0). Nothing else: no spaces, dashes or brackets.
pub fn phone(field: &str, raw: &str) -> Result<String, FieldError> {
    let digits = raw.strip_prefix('+').unwrap_or_default();
    let ok = (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(FieldError::new(
            field,
            "must be a phone number in E.164 form: + and 8 to 15 digits, e.g. +4915112345678",
        ))
    }
}

impl CheckoutBody {
    pub fn parse(self) -> Result<CheckoutRequest, ApiError> {
        let mut errors = Vec::new();
        let fingerprint = Sha256::digest(serde_json::to_vec(&self).unwrap_or_default()).to_vec();
        let customer_email = email("customer_email", &self.customer_email)
            .map_err(|e| errors.push(e))
            .ok();
        let customer_name = match self.customer_name.as_deref().map(str::trim) {
            Some(n) if n.chars().count() > 200 || n.chars().any(char::is_control) => {
                errors.push(FieldError::new(
                    "customer_name",
                    "must be at most 200 characters of text",
                ));
                None
            }
            Some("") | None => None,
            Some(n) => Some(n.to_owned()),
        };
        let customer_phone = match self.customer_phone.as_deref() {
            Some(raw) => phone("customer_phone", raw)
                .map_err(|e| errors.push(e))
                .ok(),
            None => None,
        };
        if self.items.is_empty() || self.items.len() > MAX_ITEMS {
            // Refused whole, before any per-item work: one error, however long the list.
            errors.push(FieldError::new(
                "items",
                format!("must hold 1 to {MAX_ITEMS} items"),
            ));
            return Err(ApiError::Validation(errors));
        }
        let mut lines: Vec<Line> = Vec::with_capacity(self.items.len());
        let mut line_of: HashMap<Uuid, usize> = HashMap::with_capacity(self.items.len());
        for (index, item) in self.items.iter().enumerate() {
            if !(1..=MAX_QUANTITY).contains(&item.quantity) {
                errors.push(FieldError::new(
                    format!("items[{index}].quantity"),
                    format!("must be from 1 to {MAX_QUANTITY}"),
                ));
                continue;
            }
            match line_of.get(&item.product_id) {
                Some(&at) => lines[at].quantity += item.quantity,
                None => {
                    line_of.insert(item.product_id, lines.len());
                    lines.push(Line {
                        product_id: item.product_id,
                        quantity: item.quantity,
                        index,
                    });
                }
            }
        }
        for line in &lines {
            if line.quantity > MAX_QUANTITY {
                errors.push(FieldError::new(
                    format!("items[{}].quantity", line.index),
                    format!("all items of one product together must not exceed {MAX_QUANTITY}"),
                ));
            }
        }
        match customer_email {
            Some(customer_email) if errors.is_empty() => Ok(CheckoutRequest {
                customer_email,
                customer_name,
                customer_phone,
                lines,
                fingerprint,
            }),
            _ => Err(ApiError::Validation(errors)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    Pending,
    Paid,
    Shipped,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "pending" => Self::Pending,
            "paid" => Self::Paid,
            "shipped" => Self::Shipped,
            "delivered" => Self::Delivered,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Paid => "paid",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Cancelled => "cancelled",
        }
    }

    /// pending → paid → shipped → delivered; pending or paid → cancelled.
    pub fn can_become(self, next: Self) -> bool {
        use OrderStatus::*;
        matches!(
            (self, next),
            (Pending, Paid) | (Paid, Shipped) | (Shipped, Delivered) | (Pending | Paid, Cancelled)
        )
    }
}

/// The status an order moves to.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusBody {
    #[schema(value_type = TargetStatus)]
    pub status: String,
}

/// pending → paid → shipped → delivered; pending or paid → cancelled (409 otherwise).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum TargetStatus {
    Paid,
    Shipped,
    Delivered,
    Cancelled,
}

/// An order's status.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum OrderStatusName {
    Pending,
    Paid,
    Shipped,
    Delivered,
    Cancelled,
}

impl StatusBody {
    /// The target of a transition: `pending` is where orders start, never where they go.
    pub fn parse(self) -> Result<OrderStatus, ApiError> {
        match OrderStatus::parse(&self.status) {
            Some(s) if s != OrderStatus::Pending => Ok(s),
            _ => Err(ApiError::invalid(
                "status",
                "must be paid, shipped, delivered or cancelled",
            )),
        }
    }
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderListParams {
    #[param(value_type = Option<OrderStatusName>)]
    pub status: Option<String>,
    /// First day (UTC, inclusive), `YYYY-MM-DD`; an RFC 3339 time is accepted too.
    #[param(value_type = Option<chrono::NaiveDate>)]
    pub from: Option<String>,
    /// Last day (UTC, inclusive), `YYYY-MM-DD`; an RFC 3339 time is accepted too. Not before
    /// `from` (400).
    #[param(value_type = Option<chrono::NaiveDate>)]
    pub to: Option<String>,
    /// Only `-created_at` (the default).
    #[param(pattern = "^-created_at$")]
    pub sort: Option<String>,
    #[serde(flatten)]
    #[param(ignore)]
    pub page: crate::domain::listing::PageParams,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrderFilter {
    pub status: Option<OrderStatus>,
    pub from: Option<DateTime<Utc>>,
    /// Exclusive upper bound.
    pub until: Option<DateTime<Utc>>,
}

/// An RFC 3339 instant, or a calendar day (UTC): `from` takes its start, `to` its whole day.
fn instant(field: &str, raw: &str, end_of_day: bool) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        let t = t.with_timezone(&Utc);
        return Ok(if end_of_day {
            t + chrono::Duration::microseconds(1)
        } else {
            t
        });
    }
    let day = NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|_| {
        ApiError::bad_field(field, "must be a date (YYYY-MM-DD) or an RFC 3339 time")
    })?;
    let day = if end_of_day {
        day.succ_opt()
            .ok_or_else(|| ApiError::bad_field(field, "is out of range"))?
    } else {
        day
    };
    day.and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc())
        .ok_or_else(|| ApiError::bad_field(field, "is out of range"))
}

impl OrderListParams {
    pub fn filter(&self) -> Result<OrderFilter, ApiError> {
        if let Some(sort) = &self.sort {
            if sort != "-created_at" {
                return Err(ApiError::bad_field("sort", "must be -created_at"));
            }
        }
        let status = match &self.status {
            Some(s) => Some(OrderStatus::parse(s).ok_or_else(|| {
                ApiError::bad_field(
                    "status",
                    "must be pending, paid, shipped, delivered or cancelled",
                )
            })?),
            None => None,
        };
        let from = self
            .from
            .as_deref()
            .map(|v| instant("from", v, false))
            .transpose()?;
        let until = self
            .to
            .as_deref()
            .map(|v| instant("to", v, true))
            .transpose()?;
        if let (Some(a), Some(b)) = (from, until) {
            if a >= b {
                return Err(ApiError::bad_field("from", "must be before to"));
            }
        }
        Ok(OrderFilter {
            status,
            from,
            until,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_machine_allows_only_the_documented_transitions() {
        use OrderStatus::*;
        let all = [Pending, Paid, Shipped, Delivered, Cancelled];
        let allowed = [
            (Pending, Paid),
            (Paid, Shipped),
            (Shipped, Delivered),
            (Pending, Cancelled),
            (Paid, Cancelled),
        ];
        for from in all {
            for to in all {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
    }

    #[test]
    fn repeated_products_merge_into_one_line() {
        let p = Uuid::now_v7();
        let q = Uuid::now_v7();
        let body = CheckoutBody {
            customer_email: "a@b.co".into(),
            customer_name: None,
            customer_phone: None,
            items: vec![
                ItemBody {
                    product_id: p,
                    quantity: 2,
                },
                ItemBody {
                    product_id: q,
                    quantity: 1,
                },
                ItemBody {
                    product_id: p,
                    quantity: 3,
                },
            ],
        };
        let parsed = body.parse().unwrap();
        assert_eq!(parsed.lines.len(), 2);
        assert_eq!(parsed.lines[0].quantity, 5);
        assert_eq!(parsed.lines[1].index, 1);
    }

    #[test]
    fn emails_are_checked_for_shape() {
        for ok in ["a@b.co", "first.last+tag@shop.example.com"] {
            assert!(email("e", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "a@b",
            "@b.co",
            "a@.co",
            "a b@c.co",
            "a@b..co",
            "'; DROP TABLE orders;--@x.co",
        ] {
            assert!(email("e", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn phones_are_e164() {
        for ok in [
            "+4915112345678",
            "+12025550123",
            "+12345678",
            "+123456789012345",
        ] {
            assert_eq!(phone("p", ok).as_deref(), Ok(ok), "{ok}");
        }
        for bad in [
            "",
            "+",
            "4915112345678",
            "+04915112345678",
            "+1234567",
            "+1234567890123456",
            "+49 151 12345678",
            "+49-15112345678",
            "+４９15112345678",
            " +4915112345678",
            "+4915112345678\n",
        ] {
            assert!(phone("p", bad).is_err(), "{bad:?}");
        }
    }
}
