//! The public storefront: `/api/v1/stores/{merchant_id}/...`.

use crate::catalog::ProductListing;
use crate::domain::listing::Listing;
use crate::domain::order::CheckoutBody;
use crate::domain::product::ProductListParams;
use crate::error::{ApiError, FieldError};
use crate::http::metrics::RouteLabel;
use crate::http::Json;
use crate::jobs::outbox::{order_event, outbox, sms_event};
use crate::routes::support::{not_modified, path_id};
use crate::state::AppState;
use crate::store::checkout::{Checkout, CheckoutOutcome, IdempotencyKey};
use crate::store::orders::Order;
use crate::store::products::Product;
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse};

fn cache_headers(response: &mut HttpResponse, etag: &str, cache_control: &HeaderValue) {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, v);
    }
    headers.insert(header::CACHE_CONTROL, cache_control.clone());
}

#[utoipa::path(get, path = "/api/v1/stores/{merchant_id}/products", tag = "storefront", operation_id = "listStoreProducts",
    params(("merchant_id" = uuid::Uuid, Path), ProductListParams, crate::domain::listing::PageParams),
    responses((status = 200, body = Listing<Product>, description = "active products"),
        (status = 400, description = "bad filter, sort or cursor; `status` is not a storefront filter; an offset page past `pagination.max_offset`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, response = crate::routes::responses::NotFound), (status = 503, response = crate::routes::responses::Unavailable)))]
pub async fn list(state: &AppState, merchant: &str, query: &str) -> Result<HttpResponse, ApiError> {
    let merchant_id = path_id(merchant)?;
    let parse = || {
        let params = web::Query::<ProductListParams>::from_query(query)
            .map_err(|e| ApiError::bad_request(format!("query string: {e}")))?;
        ProductListing::parse(
            &state.cursor_key,
            merchant_id,
            true,
            &params,
            &state.settings.pagination,
        )
    };
    let page = state
        .cache
        .list(
            &state.reads,
            merchant_id,
            query,
            parse,
            state.cursor_key.clone(),
        )
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(page.body.clone()))
}

#[utoipa::path(get, path = "/api/v1/stores/{merchant_id}/products/{id}", tag = "storefront", operation_id = "getStoreProduct",
    params(("merchant_id" = uuid::Uuid, Path), ("id" = uuid::Uuid, Path), ("If-None-Match" = Option<String>, Header)),
    responses((status = 200, body = Product, headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 304, description = "not modified", headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 404, description = "no such active product in this store", body = crate::error::Problem, content_type = "application/problem+json"), (status = 503, response = crate::routes::responses::Unavailable)))]
pub async fn get(
    state: &AppState,
    (merchant, id): (&str, &str),
    req: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (merchant_id, id) = (path_id(merchant)?, path_id(id)?);
    let entry = state
        .cache
        .product(&state.reads, merchant_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    // A hit serializes nothing: the stored bytes and tag are the response.
    let mut response = if not_modified(req.headers(), &entry.tag) {
        HttpResponse::NotModified().finish()
    } else {
        HttpResponse::Ok()
            .content_type("application/json")
            .body(entry.body.clone())
    };
    cache_headers(&mut response, &entry.tag, &state.cache.cache_control);
    Ok(response)
}

/// The storefront's routes under `/api/v1/stores`: `{merchant_id}/products/{id}` (GET),
/// `{merchant_id}/products` (GET), `{merchant_id}/orders` (POST); anything else is 404, another
/// method 405 with `Allow`.
pub async fn route(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // The path the router matched (percent-decoded but for `%`, `/` and `+`), so an encoded
    // `/%61pi/v1/stores/...`, routed here, is split as the path it was routed as.
    let rest = req
        .match_info()
        .as_str()
        .strip_prefix("/api/v1/stores/")
        .unwrap_or("");
    let mut segments = rest.split('/');
    let route = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    );
    match route {
        (Some(merchant), Some("products"), Some(id), None) => {
            allow(&req, "GET", "/api/v1/stores/{merchant_id}/products/{id}")?;
            get(&state, (merchant, id), &req).await
        }
        (Some(merchant), Some("products"), None, None) => {
            allow(&req, "GET", "/api/v1/stores/{merchant_id}/products")?;
            list(&state, merchant, req.query_string()).await
        }
        (Some(merchant), Some("orders"), None, None) => {
            allow(&req, "POST", "/api/v1/stores/{merchant_id}/orders")?;
            let body = Json::<CheckoutBody>::from_request(&req, &mut payload.into_inner()).await?;
            checkout(&state, merchant, &req, body).await
        }
        _ => Err(ApiError::NotFound),
    }
}

/// Labels the request for the metrics; a method other than `method` is 405.
fn allow(req: &HttpRequest, method: &'static str, label: &'static str) -> Result<(), ApiError> {
    req.extensions_mut().insert(RouteLabel(label));
    if req.method().as_str() == method {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed { allow: method })
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    // Visible ASCII with inner spaces, 1 to 255: exactly the documented pattern, untrimmed, so
    // two keys that differ in their spaces are never taken for one.
    let key = value.to_str().unwrap_or("");
    let edges_visible = key.bytes().next().is_some_and(|b| b.is_ascii_graphic())
        && key.bytes().last().is_some_and(|b| b.is_ascii_graphic());
    if !edges_visible || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
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

#[utoipa::path(post, path = "/api/v1/stores/{merchant_id}/orders", tag = "storefront", operation_id = "checkout",
    params(("merchant_id" = uuid::Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[\x21-\x7E](?:[\x20-\x7E]*[\x21-\x7E])?$",
            description = "replays the first successful response for 24 h")),
    request_body = CheckoutBody,
    responses((status = 201, body = Order, headers(("Location" = String), ("Idempotent-Replayed" = String)),
            links(("GetOrder" = (operation_id = "getOrder", parameters(("id" = "$response.body#/id")))),
                ("ChangeOrderStatus" = (operation_id = "changeOrderStatus", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "malformed JSON or Idempotency-Key", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such store", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "insufficient stock (nothing changed), or a request with this Idempotency-Key is in flight", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, response = crate::routes::responses::PayloadTooLarge), (status = 415, response = crate::routes::responses::UnsupportedMediaType),
        (status = 422, description = "invalid body (a `customer_phone` not in E.164 form among them), unknown or archived product, mixed currencies, or an Idempotency-Key reused with another body", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, response = crate::routes::responses::Unavailable)))]
pub async fn checkout(
    state: &AppState,
    merchant: &str,
    req: &HttpRequest,
    Json(body): Json<CheckoutBody>,
) -> Result<HttpResponse, ApiError> {
    let merchant_id = path_id(merchant)?;
    let key = idempotency_key(req.headers())?;
    let request = body.parse()?;
    let idempotency = key.map(|key| IdempotencyKey {
        key,
        fingerprint: request.fingerprint.clone(),
    });
    let bought: Vec<uuid::Uuid> = request.lines.iter().map(|l| l.product_id).collect();
    let outcome = state
        .db
        .run(Checkout {
            merchant_id,
            request,
            idempotency,
            outbox: outbox(&state.settings),
        })
        .await?;
    match outcome {
        CheckoutOutcome::Created {
            body,
            order_id,
            webhook,
            sms,
        } => {
            state.wake_jobs(order_event(webhook));
            state.wake_jobs(sms_event(sms));
            state.cache.invalidate(merchant_id, bought).await;
            Ok(order_response(body, order_id, false))
        }
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
