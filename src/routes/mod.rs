//! Every route, one small module per endpoint group.

pub mod admin;
pub mod health;
pub mod openapi;
pub mod orders;
pub mod products;
pub mod storefront;
mod support;

use actix_web::web;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/health").route(web::get().to(health::live)))
        .service(web::resource("/health/ready").route(web::get().to(health::ready)))
        .service(web::resource("/metrics").route(web::get().to(health::metrics)))
        .service(web::resource("/api-docs/openapi.json").route(web::get().to(openapi::document)))
        .service(
            web::resource("/api/v1/admin/merchants").route(web::post().to(admin::create_merchant)),
        )
        .service(
            web::resource("/api/v1/products")
                .route(web::get().to(products::list))
                .route(web::post().to(products::create)),
        )
        .service(
            web::resource("/api/v1/products/{id}")
                .route(web::get().to(products::get))
                .route(web::patch().to(products::update))
                .route(web::delete().to(products::archive)),
        )
        .service(
            web::resource("/api/v1/products/{id}/stock")
                .route(web::post().to(products::adjust_stock)),
        )
        .service(
            web::resource("/api/v1/stores/{merchant_id}/products")
                .route(web::get().to(storefront::list)),
        )
        .service(
            web::resource("/api/v1/stores/{merchant_id}/products/{id}")
                .route(web::get().to(storefront::get)),
        )
        .service(
            web::resource("/api/v1/stores/{merchant_id}/orders")
                .route(web::post().to(storefront::checkout)),
        )
        .service(web::resource("/api/v1/orders").route(web::get().to(orders::list)))
        .service(web::resource("/api/v1/orders/{id}").route(web::get().to(orders::get)))
        .service(
            web::resource("/api/v1/orders/{id}/status")
                .route(web::post().to(orders::change_status)),
        );
}

/// Unknown routes: a problem+json 404.
pub async fn not_found() -> Result<actix_web::HttpResponse, crate::error::ApiError> {
    Err(crate::error::ApiError::NotFound)
}
