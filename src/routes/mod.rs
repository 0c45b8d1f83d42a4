//! Every route, one small module per endpoint group.

pub mod admin;
pub mod background;
pub mod docs;
pub mod health;
pub mod openapi;
pub mod ops;
pub mod orders;
pub mod products;
pub mod responses;
pub mod storefront;
mod support;

use crate::http::auth::{admin_gate, merchant_gate};
use crate::http::metrics::RouteLabel;
use actix_web::middleware::from_fn;
use actix_web::web;

/// A resource labelled with its pattern for the metrics, so recording a request does not
/// re-match the route table (`match_pattern()` re-runs the routing regexes).
fn route(pattern: &'static str) -> actix_web::Resource {
    web::resource(pattern).app_data(RouteLabel(pattern))
}

/// A merchant's resource: its API key is checked before anything else (the body included).
fn merchant(
    pattern: &'static str,
) -> actix_web::Resource<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    route(pattern).wrap(from_fn(merchant_gate))
}

/// Dynamic path segments are matched by regex, route by route, in registration order, and a
/// profile of cached product reads showed those regexes at a sixth of all CPU. The storefront,
/// the hot path, sits under a static scope (a string comparison) and matches its own three
/// routes by splitting the path ([`storefront::route`]); it comes first.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::scope("/api/v1/stores").default_service(web::to(storefront::route)))
        .service(route("/health").route(web::get().to(health::live)))
        .service(route("/health/ready").route(web::get().to(health::ready)))
        .service(route("/metrics").route(web::get().to(health::metrics)))
        .service(route("/api-docs/openapi.json").route(web::get().to(openapi::document)))
        .service(route("/docs").route(web::get().to(docs::root)))
        .service(route("/docs/{tail:.*}").route(web::get().to(docs::asset)))
        .service(
            route("/api/v1/ops/stats")
                .route(web::get().to(ops::stats))
                .wrap(from_fn(admin_gate)),
        )
        .service(
            route("/api/v1/admin/merchants")
                .route(web::post().to(admin::create_merchant))
                .wrap(from_fn(admin_gate)),
        )
        .service(
            merchant("/api/v1/products")
                .route(web::get().to(products::list))
                .route(web::post().to(products::create)),
        )
        .service(
            merchant("/api/v1/products/{id}")
                .route(web::get().to(products::get))
                .route(web::patch().to(products::update))
                .route(web::delete().to(products::archive)),
        )
        .service(
            merchant("/api/v1/products/{id}/stock").route(web::post().to(products::adjust_stock)),
        )
        .service(merchant("/api/v1/orders").route(web::get().to(orders::list)))
        .service(merchant("/api/v1/orders/{id}").route(web::get().to(orders::get)))
        .service(
            merchant("/api/v1/orders/{id}/status").route(web::post().to(orders::change_status)),
        )
        .service(merchant("/api/v1/reports").route(web::post().to(background::create_report)))
        .service(merchant("/api/v1/reports/{id}").route(web::get().to(background::get_report)))
        .service(
            merchant("/api/v1/reports/{id}/download")
                .route(web::get().to(background::download_report)),
        )
        .service(merchant("/api/v1/analytics/sales").route(web::get().to(background::sales)))
        .service(merchant("/api/v1/jobs/{id}").route(web::get().to(background::get_job)))
        .service(merchant("/api/v1/audit").route(web::get().to(background::audit)))
        .service(merchant("/api/v1/merchant").route(web::put().to(background::update_merchant)));
}

/// Unknown routes: a problem+json 404.
pub async fn not_found() -> Result<actix_web::HttpResponse, crate::error::ApiError> {
    Err(crate::error::ApiError::NotFound)
}
