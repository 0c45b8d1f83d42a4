//! `GET /docs/`: Swagger UI over this service's own description. The page and its assets are
//! compiled into the binary (utoipa-swagger-ui's `vendored` Swagger UI), and the validator badge,
//! Swagger UI's one call to a host of its own, is off: loading the page asks nothing of any
//! other machine.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use std::sync::{Arc, OnceLock};
use utoipa_swagger_ui::Config;

/// `/docs` → `/docs/`: the page names its assets relative to itself.
pub async fn root() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/docs/"))
        .finish()
}

pub async fn asset(req: HttpRequest) -> HttpResponse {
    static CONFIG: OnceLock<Arc<Config<'static>>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        Arc::new(
            Config::new(["/api-docs/openapi.json"])
                .validator_url("none")
                .try_it_out_enabled(true),
        )
    });
    let tail = req.match_info().get("tail").unwrap_or_default();
    match utoipa_swagger_ui::serve(tail, config.clone()) {
        Ok(Some(file)) => HttpResponse::Ok()
            .content_type(file.content_type)
            .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
            .body(file.bytes.into_owned()),
        // Only the initializer is rendered, from a config that always serializes.
        Ok(None) | Err(_) => crate::error::ApiError::NotFound.error_response(),
    }
}
