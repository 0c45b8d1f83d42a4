//! Catalog input: new products, patches, list filters and sorts.

use crate::domain::integer;
use crate::domain::listing::int_param;
use crate::error::{ApiError, FieldError};
use serde::{Deserialize, Deserializer};

/// Prices up to ten billion in minor units: a 50-line order of 1,000 units each stays far
/// inside an i64.
pub const MAX_PRICE_CENTS: i64 = 10_000_000_000;
pub const MAX_STOCK: i64 = 1_000_000_000;

fn text(
    errors: &mut Vec<FieldError>,
    field: &str,
    raw: &str,
    min: usize,
    max: usize,
) -> Option<String> {
    let len = raw.chars().count();
    if len < min || len > max {
        errors.push(FieldError::new(
            field,
            format!("must be {min} to {max} characters"),
        ));
        return None;
    }
    if raw
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        errors.push(FieldError::new(
            field,
            "must not contain control characters",
        ));
        return None;
    }
    Some(raw.to_owned())
}

pub fn sku(errors: &mut Vec<FieldError>, field: &str, raw: &str) -> Option<String> {
    let value = text(errors, field, raw, 1, 64)?;
    if value.chars().any(char::is_whitespace) {
        errors.push(FieldError::new(field, "must not contain whitespace"));
        return None;
    }
    Some(value)
}

pub fn currency(errors: &mut Vec<FieldError>, field: &str, raw: &str) -> Option<String> {
    if raw.len() == 3 && raw.bytes().all(|b| b.is_ascii_uppercase()) {
        Some(raw.to_owned())
    } else {
        errors.push(FieldError::new(
            field,
            "must be an ISO 4217 code: 3 upper-case letters",
        ));
        None
    }
}

fn bounded(
    errors: &mut Vec<FieldError>,
    field: &str,
    value: i64,
    min: i64,
    max: i64,
) -> Option<i64> {
    if (min..=max).contains(&value) {
        Some(value)
    } else {
        errors.push(FieldError::new(
            field,
            format!("must be from {min} to {max}"),
        ));
        None
    }
}

fn category(errors: &mut Vec<FieldError>, raw: &str) -> Option<String> {
    text(errors, "category", raw, 1, 100)
}

/// A new product. `sku` is unique per merchant (409 when taken).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProductBody {
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\s\u0000-\u001F\u007F-\u009F]+$"
    )]
    pub sku: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    #[serde(default)]
    #[schema(
        max_length = 5000,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$",
        nullable
    )]
    pub description: Option<String>,
    #[serde(deserialize_with = "integer::integer")]
    #[schema(minimum = 0, maximum = 10_000_000_000_i64)]
    pub price_cents: i64,
    /// ISO 4217: three upper-case letters.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    #[serde(default, deserialize_with = "integer::integer")]
    #[schema(minimum = 0, maximum = 1_000_000_000, default = 0)]
    pub stock: i64,
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$",
        nullable
    )]
    pub category: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewProduct {
    pub sku: String,
    pub name: String,
    pub description: Option<String>,
    pub price_cents: i64,
    pub currency: String,
    pub stock: i64,
    pub category: Option<String>,
}

impl NewProductBody {
    pub fn parse(self) -> Result<NewProduct, ApiError> {
        let mut e = Vec::new();
        let sku = sku(&mut e, "sku", &self.sku);
        let name = text(&mut e, "name", &self.name, 1, 200);
        let description = self
            .description
            .as_deref()
            .map(|d| text(&mut e, "description", d, 0, 5000));
        let price = bounded(&mut e, "price_cents", self.price_cents, 0, MAX_PRICE_CENTS);
        let currency = currency(&mut e, "currency", &self.currency);
        let stock = bounded(&mut e, "stock", self.stock, 0, MAX_STOCK);
        let category = self.category.as_deref().map(|c| category(&mut e, c));
        match (sku, name, price, currency, stock) {
            (Some(sku), Some(name), Some(price_cents), Some(currency), Some(stock))
                if e.is_empty() =>
            {
                Ok(NewProduct {
                    sku,
                    name,
                    description: description.flatten(),
                    price_cents,
                    currency,
                    stock,
                    category: category.flatten(),
                })
            }
            _ => Err(ApiError::Validation(e)),
        }
    }
}

/// A field that may be absent but, when present, is not `null`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Absent stays `None`; an explicit `null` becomes `Some(None)`.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A partial update: at least one field. `description` and `category` may be set to null.
/// Setting `stock` needs `If-Match` (428 without it).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductPatchBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(min_length = 1, max_length = 64, pattern = r"^[^\s\u0000-\u001F\u007F-\u009F]+$", value_type = String)]
    pub sku: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$", value_type = String)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(max_length = 5000, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$", value_type = Option<String>, nullable)]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "integer::present")]
    #[schema(minimum = 0, maximum = 10_000_000_000_i64, value_type = i64)]
    pub price_cents: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^[A-Z]{3}$", value_type = String)]
    pub currency: Option<String>,
    #[serde(default, deserialize_with = "integer::present")]
    #[schema(minimum = 0, maximum = 1_000_000_000, value_type = i64)]
    pub stock: Option<i64>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(min_length = 1, max_length = 100, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$", value_type = Option<String>, nullable)]
    pub category: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = ProductStatus)]
    pub status: Option<String>,
}

/// A product's status.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ProductStatus {
    Active,
    Archived,
}

#[derive(Debug, Clone, Default)]
pub struct ProductPatch {
    pub sku: Option<String>,
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub price_cents: Option<i64>,
    pub currency: Option<String>,
    pub stock: Option<i64>,
    pub category: Option<Option<String>>,
    pub status: Option<String>,
}

impl ProductPatchBody {
    pub fn parse(self) -> Result<ProductPatch, ApiError> {
        let mut e = Vec::new();
        let patch = ProductPatch {
            sku: self.sku.as_deref().and_then(|v| sku(&mut e, "sku", v)),
            name: self
                .name
                .as_deref()
                .and_then(|v| text(&mut e, "name", v, 1, 200)),
            description: self
                .description
                .map(|d| d.and_then(|v| text(&mut e, "description", &v, 0, 5000))),
            price_cents: self
                .price_cents
                .and_then(|v| bounded(&mut e, "price_cents", v, 0, MAX_PRICE_CENTS)),
            currency: self
                .currency
                .as_deref()
                .and_then(|v| currency(&mut e, "currency", v)),
            stock: self
                .stock
                .and_then(|v| bounded(&mut e, "stock", v, 0, MAX_STOCK)),
            category: self.category.map(|c| c.and_then(|v| category(&mut e, &v))),
            status: match self.status.as_deref() {
                None => None,
                Some(s @ ("active" | "archived")) => Some(s.to_owned()),
                Some(_) => {
                    e.push(FieldError::new("status", "must be active or archived"));
                    None
                }
            },
        };
        if !e.is_empty() {
            return Err(ApiError::Validation(e));
        }
        let empty = patch.sku.is_none()
            && patch.name.is_none()
            && patch.description.is_none()
            && patch.price_cents.is_none()
            && patch.currency.is_none()
            && patch.stock.is_none()
            && patch.category.is_none()
            && patch.status.is_none();
        if empty {
            return Err(ApiError::invalid("body", "must change at least one field"));
        }
        Ok(patch)
    }
}

/// A relative stock change; 409 when the stock would go below zero.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockDeltaBody {
    #[serde(deserialize_with = "integer::integer")]
    #[schema(minimum = -1_000_000_000, maximum = 1_000_000_000)]
    pub delta: i64,
}

impl StockDeltaBody {
    pub fn parse(self) -> Result<i64, ApiError> {
        let mut e = Vec::new();
        bounded(&mut e, "delta", self.delta, -MAX_STOCK, MAX_STOCK).ok_or(ApiError::Validation(e))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    CreatedAsc,
    CreatedDesc,
    PriceAsc,
    PriceDesc,
    NameAsc,
    NameDesc,
}

impl Sort {
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        Ok(match raw.unwrap_or("-created_at") {
            "created_at" => Sort::CreatedAsc,
            "-created_at" => Sort::CreatedDesc,
            "price" => Sort::PriceAsc,
            "-price" => Sort::PriceDesc,
            "name" => Sort::NameAsc,
            "-name" => Sort::NameDesc,
            _ => {
                return Err(ApiError::bad_field(
                    "sort",
                    "must be one of created_at, -created_at, price, -price, name, -name",
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Sort::CreatedAsc => "created_at",
            Sort::CreatedDesc => "-created_at",
            Sort::PriceAsc => "price",
            Sort::PriceDesc => "-price",
            Sort::NameAsc => "name",
            Sort::NameDesc => "-name",
        }
    }

    pub fn column(self) -> &'static str {
        match self {
            Sort::CreatedAsc | Sort::CreatedDesc => "created_at",
            Sort::PriceAsc | Sort::PriceDesc => "price_cents",
            Sort::NameAsc | Sort::NameDesc => "name",
        }
    }

    pub fn descending(self) -> bool {
        matches!(self, Sort::CreatedDesc | Sort::PriceDesc | Sort::NameDesc)
    }
}

/// The raw list query of the catalog and the storefront (`status` is a catalog filter only).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProductListParams {
    /// Catalog only: `active` or `archived` (the storefront lists active products; 400 there).
    #[param(value_type = Option<ProductStatus>)]
    pub status: Option<String>,
    #[param(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub category: Option<String>,
    /// Full-text search over name and description.
    #[param(max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub q: Option<String>,
    #[param(value_type = Option<i64>, minimum = 0, maximum = 10_000_000_000_i64)]
    pub min_price: Option<String>,
    /// At least `min_price` (400 otherwise).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 10_000_000_000_i64)]
    pub max_price: Option<String>,
    #[param(value_type = Option<ProductSort>)]
    pub sort: Option<String>,
    #[serde(flatten)]
    #[param(ignore)]
    pub page: crate::domain::listing::PageParams,
}

/// The orders of a product list; `-` is descending. Default `-created_at`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub enum ProductSort {
    #[schema(rename = "created_at")]
    CreatedAt,
    #[schema(rename = "-created_at")]
    CreatedAtDesc,
    #[schema(rename = "price")]
    Price,
    #[schema(rename = "-price")]
    PriceDesc,
    #[schema(rename = "name")]
    Name,
    #[schema(rename = "-name")]
    NameDesc,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProductFilter {
    pub status: Option<String>,
    pub category: Option<String>,
    pub q: Option<String>,
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
}

impl ProductFilter {
    /// A canonical text of the filter, which cursors are bound to.
    pub fn fingerprint(&self) -> String {
        format!("{:?}", self)
    }
}

fn price_param(field: &str, raw: &Option<String>) -> Result<Option<i64>, ApiError> {
    int_param(field, raw, 0..=MAX_PRICE_CENTS)
}

impl ProductListParams {
    /// `storefront`: only active products are listed and `status` is not a filter there.
    pub fn filter(&self, storefront: bool) -> Result<ProductFilter, ApiError> {
        let status = match (self.status.as_deref(), storefront) {
            (None, _) => None,
            (Some(_), true) => {
                return Err(ApiError::bad_field("status", "is not a storefront filter"))
            }
            (Some(s @ ("active" | "archived")), false) => Some(s.to_owned()),
            (Some(_), false) => {
                return Err(ApiError::bad_field("status", "must be active or archived"))
            }
        };
        for (field, value) in [("category", &self.category), ("q", &self.q)] {
            // PostgreSQL cannot take a NUL in text: refused here, as the malformed query it is.
            if value
                .as_deref()
                .is_some_and(|v| v.chars().any(char::is_control))
            {
                return Err(ApiError::bad_field(
                    field,
                    "must not contain control characters",
                ));
            }
        }
        let category = match &self.category {
            Some(c) if c.is_empty() || c.chars().count() > 100 => {
                return Err(ApiError::bad_field(
                    "category",
                    "must be 1 to 100 characters",
                ))
            }
            other => other.clone(),
        };
        let q = match &self.q {
            Some(q) if q.chars().count() > 200 => {
                return Err(ApiError::bad_field("q", "must be at most 200 characters"))
            }
            Some(q) if q.trim().is_empty() => None,
            other => other.clone(),
        };
        let min_price = price_param("min_price", &self.min_price)?;
        let max_price = price_param("max_price", &self.max_price)?;
        if let (Some(lo), Some(hi)) = (min_price, max_price) {
            if lo > hi {
                return Err(ApiError::bad_field(
                    "min_price",
                    "must not exceed max_price",
                ));
            }
        }
        Ok(ProductFilter {
            status,
            category,
            q,
            min_price,
            max_price,
        })
    }
}
