//! The public storefront: `/api/v1/stores/{merchant_id}/...`.

use crate::domain::order::CheckoutBody;
use crate::domain::product::ProductListParams;
use crate::error::{ApiError, FieldError};
use crate::http::Json;
use crate::routes::products::ProductPage;
use crate::routes::support::{not_modified, path_id};
use crate::state::AppState;
use crate::store::merchants::Exists;
use crate::store::orders::{Checkout, CheckoutOutcome, IdempotencyKey, Order};
use crate::store::products::{self, Product};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};

fn cache_headers(response: &mut HttpResponse, product: &Product, max_age: u64) {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&product.etag()) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}, must-revalidate")) {
        headers.insert(header::CACHE_CONTROL, v);
    }
}

#[utoipa::path(get, path = "/api/v1/stores/{merchant_id}/products", tag = "storefront",
    params(("merchant_id" = uuid::Uuid, Path), ("category" = Option<String>, Query), ("q" = Option<String>, Query), ("min_price" = Option<i64>, Query), ("max_price" = Option<i64>, Query),
        ("sort" = Option<String>, Query), ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query), ("page" = Option<i64>, Query), ("per_page" = Option<i64>, Query)),
    responses((status = 200, description = "active products, paginated"), (status = 400, description = "bad filter, sort or cursor; `status` is not a storefront filter"), (status = 404)))]
pub async fn list(
    state: web::Data<AppState>,
    merchant: web::Path<String>,
    params: web::Query<ProductListParams>,
) -> Result<HttpResponse, ApiError> {
    let merchant_id = path_id(&merchant)?;
    let page = ProductPage::fetch(&state, merchant_id, true, &params).await?;
    // An empty page may mean there is no such store: only then is it worth asking.
    if page.is_empty() && !state.db.run(Exists(merchant_id)).await? {
        return Err(ApiError::NotFound);
    }
    Ok(page.respond(&state.cursor_key))
}

#[utoipa::path(get, path = "/api/v1/stores/{merchant_id}/products/{id}", tag = "storefront",
    params(("merchant_id" = uuid::Uuid, Path), ("id" = uuid::Uuid, Path), ("If-None-Match" = Option<String>, Header)),
    responses((status = 200, body = Product, headers(("ETag"), ("Cache-Control"))), (status = 304), (status = 404, description = "no such active product in this store")))]
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (merchant_id, id) = (path_id(&path.0)?, path_id(&path.1)?);
    let product = state
        .db
        .run(products::Get {
            merchant_id,
            id,
            active_only: true,
        })
        .await?
        .ok_or(ApiError::NotFound)?;
    let max_age = state.settings.cache.storefront_max_age_secs;
    let mut response = if not_modified(req.headers(), &product.etag()) {
        HttpResponse::NotModified().finish()
    } else {
        HttpResponse::Ok().json(&product)
    };
    cache_headers(&mut response, &product, max_age);
    Ok(response)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().ok().map(str::trim).unwrap_or("");
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(ApiError::bad_field(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(Some(key.to_owned()))
}

fn order_response(body: Vec<u8>, order_id: uuid::Uuid, replayed: bool) -> HttpResponse {
    let mut response = HttpResponse::Created();
    response
        .insert_header((header::LOCATION, format!("/api/v1/orders/{order_id}")))
        .content_type("application/json");
    if replayed {
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    response.body(body)
}

#[utoipa::path(post, path = "/api/v1/stores/{merchant_id}/orders", tag = "storefront",
    params(("merchant_id" = uuid::Uuid, Path), ("Idempotency-Key" = Option<String>, Header, description = "at most 255 characters; replays the first successful response for 24 h")),
    request_body(content = Object, description = "{customer_email, customer_name?, items: [{product_id, quantity}]}"),
    responses((status = 201, body = Order, headers(("Location"), ("Idempotent-Replayed"))),
        (status = 404, description = "no such store"),
        (status = 409, description = "insufficient stock (nothing changed), or a request with this Idempotency-Key is in flight"),
        (status = 422, description = "invalid body, unknown or archived product, mixed currencies, or an Idempotency-Key reused with another body")))]
pub async fn checkout(
    state: web::Data<AppState>,
    merchant: web::Path<String>,
    req: HttpRequest,
    Json(body): Json<CheckoutBody>,
) -> Result<HttpResponse, ApiError> {
    let merchant_id = path_id(&merchant)?;
    let key = idempotency_key(req.headers())?;
    let request = body.parse()?;
    let idempotency = key.map(|key| IdempotencyKey {
        key,
        fingerprint: request.fingerprint.clone(),
    });
    let outcome = state
        .db
        .run(Checkout {
            merchant_id,
            request,
            idempotency,
            max_attempts: state.settings.jobs.max_attempts as i32,
        })
        .await?;
    match outcome {
        CheckoutOutcome::Created { body, order_id } => Ok(order_response(body, order_id, false)),
        CheckoutOutcome::Replayed { body, order_id } => Ok(order_response(body, order_id, true)),
        CheckoutOutcome::InFlight => Err(ApiError::Conflict {
            kind: "idempotency-in-flight",
            title: "Request in flight",
            detail: "a request with this Idempotency-Key is still being processed; retry later"
                .into(),
        }),
        CheckoutOutcome::KeyReused => Err(ApiError::Unprocessable {
            kind: "idempotency-key-reused",
            title: "Idempotency-Key reused",
            detail: "this Idempotency-Key was used with a different request body".into(),
        }),
        CheckoutOutcome::StoreNotFound => Err(ApiError::NotFound),
        CheckoutOutcome::UnknownProduct { index } => {
            Err(ApiError::Validation(vec![FieldError::new(
                format!("items[{index}].product_id"),
                "names no active product of this store",
            )]))
        }
        CheckoutOutcome::CurrencyMismatch { index } => {
            Err(ApiError::Validation(vec![FieldError::new(
                format!("items[{index}].product_id"),
                "is priced in another currency than the other items",
            )]))
        }
        CheckoutOutcome::Insufficient {
            product_id,
            available,
            requested,
        } => Err(ApiError::Conflict {
            kind: "insufficient-stock",
            title: "Insufficient stock",
            detail: format!("product {product_id} has {available} in stock; {requested} requested"),
        }),
    }
}
