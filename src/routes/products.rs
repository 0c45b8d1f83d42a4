//! The merchant's catalog: `/api/v1/products`.

use crate::catalog::ProductListing;
use crate::domain::listing::Listing;
use crate::domain::product::{NewProductBody, ProductListParams, ProductPatchBody, StockDeltaBody};
use crate::error::ApiError;
use crate::http::{Json, MerchantAuth};
use crate::jobs::kinds::AUDIT;
use crate::jobs::outbox::outbox;
use crate::routes::support::{not_modified, path_id, IfMatch};
use crate::state::AppState;
use crate::store::products::{self, Product, Write};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use rampart_actors::DbError;

fn duplicate_sku(e: DbError) -> ApiError {
    match e {
        DbError::Constraint { name, .. } if name == "products_merchant_sku_key" => {
            ApiError::Conflict {
                kind: "duplicate-sku",
                title: "Duplicate SKU",
                detail: "another product of this merchant has that sku".into(),
            }
        }
        other => other.into(),
    }
}

fn with_tag(mut response: HttpResponse, product: &Product) -> HttpResponse {
    if let Ok(v) = header::HeaderValue::from_str(&product.etag()) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

fn written(outcome: Write) -> Result<HttpResponse, ApiError> {
    match outcome {
        Write::Done(p) => Ok(with_tag(HttpResponse::Ok().json(&p), &p)),
        Write::NotFound => Err(ApiError::NotFound),
        Write::Stale => Err(ApiError::PreconditionFailed),
        Write::Insufficient => Err(ApiError::Conflict {
            kind: "insufficient-stock",
            title: "Insufficient stock",
            detail: "the stock would go below zero".into(),
        }),
    }
}

#[utoipa::path(post, path = "/api/v1/products", tag = "catalog", operation_id = "createProduct",
    request_body = NewProductBody,
    responses((status = 201, body = Product, headers(("Location" = String), ("ETag" = String)),
            links(("GetProduct" = (operation_id = "getProduct", parameters(("id" = "$response.body#/id")))),
                ("UpdateProduct" = (operation_id = "updateProduct", parameters(("id" = "$response.body#/id")))),
                ("AdjustStock" = (operation_id = "adjustStock", parameters(("id" = "$response.body#/id")))),
                ("ArchiveProduct" = (operation_id = "archiveProduct", parameters(("id" = "$response.body#/id")))),
                ("Checkout" = (operation_id = "checkout", request_body = json!({"customer_email": "link@example.com", "items": [{"product_id": "$response.body#/id", "quantity": 1}]}))))),
        (status = 400, response = crate::routes::responses::BadRequest), (status = 401, response = crate::routes::responses::Unauthorized), (status = 409, description = "duplicate sku", body = crate::error::Problem, content_type = "application/problem+json"), (status = 413, response = crate::routes::responses::PayloadTooLarge), (status = 415, response = crate::routes::responses::UnsupportedMediaType), (status = 422, response = crate::routes::responses::Unprocessable), (status = 503, response = crate::routes::responses::Unavailable)),
    security(("api_key" = [])))]
pub async fn create(
    auth: MerchantAuth,
    state: web::Data<AppState>,
    Json(body): Json<NewProductBody>,
) -> Result<HttpResponse, ApiError> {
    let product = body.parse()?;
    let created = state
        .db
        .run(products::Insert {
            merchant_id: auth.merchant_id,
            product,
            outbox: outbox(&state.settings),
        })
        .await
        .map_err(duplicate_sku)?;
    state.wake_jobs(&[&AUDIT]);
    // Its key too: a storefront read of this id may have been remembered as absent.
    state.cache.invalidate(auth.merchant_id, [created.id]).await;
    let response = HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/products/{}", created.id)))
        .json(&created);
    Ok(with_tag(response, &created))
}

#[utoipa::path(get, path = "/api/v1/products", tag = "catalog", operation_id = "listProducts",
    params(ProductListParams, crate::domain::listing::PageParams),
    responses((status = 200, body = Listing<Product>), (status = 400, response = crate::routes::responses::BadRequest), (status = 401, response = crate::routes::responses::Unauthorized), (status = 503, response = crate::routes::responses::Unavailable)), security(("api_key" = [])))]
pub async fn list(
    auth: MerchantAuth,
    state: web::Data<AppState>,
    params: web::Query<ProductListParams>,
) -> Result<HttpResponse, ApiError> {
    let listing = ProductListing::parse(
        &state.cursor_key,
        auth.merchant_id,
        false,
        &params,
        &state.settings.pagination,
    )?;
    let result = state
        .reads
        .run(auth.merchant_id, products::List(listing.query.clone()))
        .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(listing.body(result, &state.cursor_key)))
}

#[utoipa::path(get, path = "/api/v1/products/{id}", tag = "catalog", operation_id = "getProduct",
    params(("id" = uuid::Uuid, Path), ("If-None-Match" = Option<String>, Header)),
    responses((status = 200, body = Product, headers(("ETag" = String))), (status = 304, description = "not modified", headers(("ETag" = String))),
        (status = 401, response = crate::routes::responses::Unauthorized), (status = 404, response = crate::routes::responses::NotFound), (status = 503, response = crate::routes::responses::Unavailable)), security(("api_key" = [])))]
pub async fn get(
    auth: MerchantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id)?;
    let product = state
        .reads
        .run(
            auth.merchant_id,
            products::Get {
                merchant_id: auth.merchant_id,
                id,
                active_only: false,
            },
        )
        .await?
        .ok_or(ApiError::NotFound)?;
    if not_modified(req.headers(), &product.etag()) {
        return Ok(with_tag(HttpResponse::NotModified().finish(), &product));
    }
    Ok(with_tag(HttpResponse::Ok().json(&product), &product))
}

#[utoipa::path(patch, path = "/api/v1/products/{id}", tag = "catalog", operation_id = "updateProduct",
    params(("id" = uuid::Uuid, Path), ("If-Match" = Option<String>, Header, description = "strong entity tags (`\"v3\"`, a list, or `*`); required to set `stock`")),
    request_body = ProductPatchBody,
    responses((status = 200, body = Product, headers(("ETag" = String))), (status = 400, response = crate::routes::responses::BadRequest), (status = 401, response = crate::routes::responses::Unauthorized), (status = 404, response = crate::routes::responses::NotFound),
        (status = 409, description = "duplicate sku", body = crate::error::Problem, content_type = "application/problem+json"), (status = 412, response = crate::routes::responses::PreconditionFailed), (status = 413, response = crate::routes::responses::PayloadTooLarge), (status = 415, response = crate::routes::responses::UnsupportedMediaType), (status = 422, response = crate::routes::responses::Unprocessable), (status = 428, response = crate::routes::responses::PreconditionRequired), (status = 503, response = crate::routes::responses::Unavailable)),
    security(("api_key" = [])))]
pub async fn update(
    auth: MerchantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
    req: HttpRequest,
    Json(body): Json<ProductPatchBody>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id)?;
    let if_match = IfMatch::parse(req.headers())?;
    let patch = body.parse()?;
    if patch.stock.is_some() && if_match.is_absent() {
        // An absolute stock written blind would erase the sales made since the client read it.
        return Err(ApiError::PreconditionRequired);
    }
    let outcome = state
        .db
        .run(products::Update {
            merchant_id: auth.merchant_id,
            id,
            patch,
            if_versions: if_match.versions(),
            outbox: outbox(&state.settings),
        })
        .await
        .map_err(duplicate_sku)?;
    if let Write::Done(_) = outcome {
        state.wake_jobs(&[&AUDIT]);
        state.cache.invalidate(auth.merchant_id, [id]).await;
    }
    written(outcome)
}

#[utoipa::path(delete, path = "/api/v1/products/{id}", tag = "catalog", operation_id = "archiveProduct",
    params(("id" = uuid::Uuid, Path)),
    responses((status = 204, description = "archived (orders keep referring to it)"), (status = 401, response = crate::routes::responses::Unauthorized), (status = 404, response = crate::routes::responses::NotFound), (status = 503, response = crate::routes::responses::Unavailable)), security(("api_key" = [])))]
pub async fn archive(
    auth: MerchantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id)?;
    if state
        .db
        .run(products::Archive {
            merchant_id: auth.merchant_id,
            id,
            outbox: outbox(&state.settings),
        })
        .await?
    {
        state.wake_jobs(&[&AUDIT]);
        state.cache.invalidate(auth.merchant_id, [id]).await;
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotFound)
    }
}

#[utoipa::path(post, path = "/api/v1/products/{id}/stock", tag = "catalog", operation_id = "adjustStock",
    params(("id" = uuid::Uuid, Path)),
    request_body = StockDeltaBody,
    responses((status = 200, body = Product, headers(("ETag" = String))), (status = 400, response = crate::routes::responses::BadRequest), (status = 401, response = crate::routes::responses::Unauthorized), (status = 404, response = crate::routes::responses::NotFound),
        (status = 409, description = "stock would go below zero", body = crate::error::Problem, content_type = "application/problem+json"), (status = 413, response = crate::routes::responses::PayloadTooLarge), (status = 415, response = crate::routes::responses::UnsupportedMediaType), (status = 422, response = crate::routes::responses::Unprocessable), (status = 503, response = crate::routes::responses::Unavailable)),
    security(("api_key" = [])))]
pub async fn adjust_stock(
    auth: MerchantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
    Json(body): Json<StockDeltaBody>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id)?;
    let delta = body.parse()?;
    let outcome = state
        .db
        .run(products::AdjustStock {
            merchant_id: auth.merchant_id,
            id,
            delta,
            outbox: outbox(&state.settings),
        })
        .await
        .map_err(|e| match e {
            DbError::Constraint { .. } => {
                ApiError::invalid("delta", "would take the stock past its limit")
            }
            other => other.into(),
        })?;
    if let Write::Done(_) = outcome {
        state.wake_jobs(&[&AUDIT]);
        state.cache.invalidate(auth.merchant_id, [id]).await;
    }
    written(outcome)
}
