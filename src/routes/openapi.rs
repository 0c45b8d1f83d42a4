//! `GET /api-docs/openapi.json`: the OpenAPI 3 description, generated from the handlers'
//! annotations. No interactive page is served: every such page (Swagger UI, Redoc, Scalar)
//! would be fetched from the internet at build or run time.

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(what.to_owned()))
                    .build(),
            )
        };
        components.add_security_scheme(
            "api_key",
            bearer("a merchant API key (rk_live_...), shown once at creation"),
        );
        components.add_security_scheme("admin_token", bearer("the admin token from configuration"));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Rampart", description = "A commerce backend: catalog, storefront with checkout, orders.\n\n\
        Errors are `application/problem+json` (RFC 9457) with `type`, `title`, `status`, `detail`, `request_id` and, \
        for validation failures, `errors: [{field, message}]`. Every response carries `X-Request-Id`. \
        A 429 or 503 carries `Retry-After`. Lists paginate by keyset (`limit`, `cursor` → `{data, next_cursor, has_more}`) \
        or by offset (`page`, `per_page` → `{data, page, per_page, total}`); mixing the two is a 400. \
        Another merchant's resources are 404."),
    paths(
        crate::routes::admin::create_merchant,
        crate::routes::products::create, crate::routes::products::list, crate::routes::products::get,
        crate::routes::products::update, crate::routes::products::archive, crate::routes::products::adjust_stock,
        crate::routes::storefront::list, crate::routes::storefront::get, crate::routes::storefront::checkout,
        crate::routes::orders::list, crate::routes::orders::get, crate::routes::orders::change_status,
        health_doc, ready_doc, metrics_doc,
    ),
    components(schemas(crate::store::products::Product, crate::store::orders::Order, crate::store::orders::OrderItem,
        crate::store::merchants::Merchant, crate::store::merchants::CreatedMerchant, crate::routes::admin::CreateMerchantBody)),
    modifiers(&Security),
)]
pub struct ApiDoc;

/// Liveness: 200 while the process serves.
#[utoipa::path(get, path = "/health", tag = "ops", responses((status = 200, description = "{\"status\":\"ok\"}")))]
#[allow(dead_code)]
fn health_doc() {}

/// Readiness: PostgreSQL within its deadline, every actor running.
#[utoipa::path(get, path = "/health/ready", tag = "ops", responses((status = 200, description = "ready or degraded"), (status = 503, description = "unready")))]
#[allow(dead_code)]
fn ready_doc() {}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "text/plain; version=0.0.4")))]
#[allow(dead_code)]
fn metrics_doc() {}

pub async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
