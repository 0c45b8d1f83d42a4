//! The merchant's orders: `/api/v1/orders`.

use crate::domain::listing::{listing_body, CursorScope, Listing};
use crate::domain::order::{OrderListParams, OrderStatus, StatusBody};
use crate::error::ApiError;
use crate::http::{Json, MerchantAuth};
use crate::jobs::outbox::{order_event, outbox, sms_event};
use crate::routes::support::path_id;
use crate::state::AppState;
use crate::store::orders::{self, ChangeStatus, Order, OrderQuery, StatusOutcome};
use actix_web::{web, HttpResponse};

#[utoipa::path(get, path = "/api/v1/orders", tag = "orders", operation_id = "listOrders",
    params(OrderListParams, crate::domain::listing::PageParams),
    responses((status = 200, body = Listing<Order>, description = "newest first"), (status = 400, response = crate::routes::responses::BadRequest), (status = 401, response = crate::routes::responses::Unauthorized), (status = 503, response = crate::routes::responses::Unavailable)), security(("api_key" = [])))]
pub async fn list(
    auth: MerchantAuth,
    state: web::Data<AppState>,
    params: web::Query<OrderListParams>,
) -> Result<HttpResponse, ApiError> {
    let filter = params.filter()?;
    let scope = CursorScope {
        listing: "orders",
        merchant_id: auth.merchant_id,
        sort: "-created_at",
        filters: format!("{filter:?}"),
    };
    let page = params
        .page
        .parse(&state.cursor_key, &scope, &state.settings.pagination)?;
    let query = OrderQuery {
        merchant_id: auth.merchant_id,
        filter,
        page: page.clone(),
    };
    let result = state.db.run(orders::List(query)).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(listing_body(
            result.rows,
            result.has_more,
            result.total,
            &page,
            (&state.cursor_key, &scope),
            Order::position,
        )))
}

#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "orders", operation_id = "getOrder", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = Order), (status = 401, response = crate::routes::responses::Unauthorized), (status = 404, response = crate::routes::responses::NotFound), (status = 503, response = crate::routes::responses::Unavailable)), security(("api_key" = [])))]
pub async fn get(
    auth: MerchantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id)?;
    let order = state
        .db
        .run(orders::Get {
            merchant_id: auth.merchant_id,
            id,
        })
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(order))
}

#[utoipa::path(post, path = "/api/v1/orders/{id}/status", tag = "orders", operation_id = "changeOrderStatus", params(("id" = uuid::Uuid, Path)),
    request_body = StatusBody,
    responses((status = 200, body = Order), (status = 400, response = crate::routes::responses::BadRequest), (status = 401, response = crate::routes::responses::Unauthorized), (status = 404, response = crate::routes::responses::NotFound), (status = 409, description = "transition not allowed", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, response = crate::routes::responses::PayloadTooLarge), (status = 415, response = crate::routes::responses::UnsupportedMediaType), (status = 422, response = crate::routes::responses::Unprocessable), (status = 503, response = crate::routes::responses::Unavailable)), security(("api_key" = [])))]
pub async fn change_status(
    auth: MerchantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
    Json(body): Json<StatusBody>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id)?;
    let to = body.parse()?;
    let outcome = state
        .db
        .run(ChangeStatus {
            merchant_id: auth.merchant_id,
            id,
            to,
            outbox: outbox(&state.settings),
        })
        .await?;
    match outcome {
        StatusOutcome::Changed(order, webhook) => {
            state.wake_jobs(order_event(webhook));
            state.wake_jobs(sms_event(order.customer_phone.is_some()));
            if to == OrderStatus::Cancelled {
                // The stock went back.
                let restocked = order.items.iter().map(|i| i.product_id);
                state.cache.invalidate(auth.merchant_id, restocked).await;
            }
            Ok(HttpResponse::Ok().json(order))
        }
        StatusOutcome::NotFound => Err(ApiError::NotFound),
        StatusOutcome::NotAllowed { from } => Err(ApiError::Conflict {
            kind: "invalid-transition",
            title: "Invalid status transition",
            detail: format!("an order that is {from} cannot become {}", to.as_str()),
        }),
    }
}
