//! `GET /api-docs/openapi.json`: the OpenAPI 3 description, generated from the handlers'
//! annotations and the Rust types they take and return (request bodies, query parameters with
//! their bounds, entities, problems). Every status a handler can answer is listed; the problem
//! responses are declared once (`routes/responses.rs`) and named by each operation. `make
//! conformance` runs schemathesis against the running service to keep the description honest.

use crate::error::{FieldError, Problem};
use crate::routes::responses::{
    BadRequest, Conflict, Liveness, NotFound, PayloadTooLarge, PreconditionFailed,
    PreconditionRequired, RateLimited, Readiness, Unauthorized, Unavailable, Unprocessable,
    UnsupportedMediaType,
};
use actix_web::HttpResponse;
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Schema};
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
        // utoipa 5.5 writes `#[schema(min_properties)]` as `maxProperties`: set it here instead.
        for name in ["ProductPatchBody", "MerchantBody"] {
            if let Some(RefOr::T(Schema::Object(patch))) = components.schemas.get_mut(name) {
                patch.min_properties = Some(1);
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Rampart", description = "A commerce backend: catalog, storefront with checkout, orders.\n\n\
        Errors are `application/problem+json` (RFC 9457) with `type`, `title`, `status`, `detail`, `request_id` and, \
        for validation failures, `errors: [{field, message}]`. Every response carries `X-Request-Id`. \
        A 429 or 503 carries `Retry-After`. Every request has a deadline (`server.request_timeout_ms`): past it \
        the answer is 503 and the request's work is rolled back, never committed later, so a 5xx write may be retried. \
        Credentials are checked before the body is read. \
        Lists paginate by keyset (`limit`, `cursor` → `{data, next_cursor, has_more}`) \
        or by offset (`page`, `per_page` → `{data, page, per_page, total, total_exact}`); mixing the two is a 400. \
        Offset pages stop at a window (`pagination.max_offset` rows deep, default 10,000: deeper is a 400 naming \
        cursors as the way on), and `total` is exact up to `pagination.max_total` (beyond it, that number with \
        `total_exact: false`). \
        Another merchant's resources are 404."),
    paths(
        crate::routes::admin::create_merchant,
        crate::routes::products::create, crate::routes::products::list, crate::routes::products::get,
        crate::routes::products::update, crate::routes::products::archive, crate::routes::products::adjust_stock,
        crate::routes::storefront::list, crate::routes::storefront::get, crate::routes::storefront::checkout,
        crate::routes::orders::list, crate::routes::orders::get, crate::routes::orders::change_status,
        crate::routes::background::create_report, crate::routes::background::get_report,
        crate::routes::background::download_report, crate::routes::background::sales,
        crate::routes::background::get_job, crate::routes::background::audit,
        crate::routes::background::update_merchant,
        health_doc, ready_doc, metrics_doc, crate::routes::ops::stats,
    ),
    components(
        schemas(Problem, FieldError, Liveness, Readiness),
        responses(BadRequest, Unauthorized, NotFound, Conflict, PreconditionFailed, PreconditionRequired,
            PayloadTooLarge, UnsupportedMediaType, Unprocessable, Unavailable, RateLimited),
    ),
    modifiers(&Security),
)]
pub struct ApiDoc;

/// Liveness: 200 while the process serves; touches no dependency.
#[utoipa::path(get, path = "/health", tag = "ops", operation_id = "health",
    responses((status = 200, body = Liveness)))]
#[allow(dead_code)]
fn health_doc() {}

/// Readiness: PostgreSQL answered the latest background check and every actor runs. Answered
/// from state sampled every `health.refresh_ms` (the first sample taken before the port opens),
/// so any number of probes adds no database work; the body names no merchant's webhook host,
/// and one merchant's failing webhook host never makes the instance `degraded`. Served on the
/// main port and on `server.management_port` when set.
#[utoipa::path(get, path = "/health/ready", tag = "ops", operation_id = "ready",
    responses((status = 200, body = Readiness, description = "ready or degraded"),
        (status = 503, body = Readiness, description = "unready", headers(("Retry-After" = u32)))))]
#[allow(dead_code)]
fn ready_doc() {}

/// Prometheus text format. With `server.management_port` set, served only on that port (404 on
/// the main port).
#[utoipa::path(get, path = "/metrics", tag = "ops", operation_id = "metrics",
    responses((status = 200, body = String, content_type = "text/plain"),
        (status = 404, response = NotFound)))]
#[allow(dead_code)]
fn metrics_doc() {}

/// The document, rendered once. utoipa 5 writes a link's fields in snake case
/// (`operation_id`); OpenAPI spells them in camel case, so they are renamed here.
pub async fn document() -> HttpResponse {
    static DOCUMENT: OnceLock<Vec<u8>> = OnceLock::new();
    let body = DOCUMENT.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        camel_case_links(&mut doc);
        rate_limited_routes(&mut doc);
        serde_json::to_vec(&doc).unwrap_or_default()
    });
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body.clone())
}

/// Every operation of a limited route (`/api/v1/`, but admin and ops) may answer 429, and every
/// response it gives carries the `RateLimit-*` headers ([`crate::http::rate_limit`]). Shared
/// response components (a `$ref`) are left as they are: they also serve unlimited routes.
/// Admin and ops operations may answer 429 too, to a client whose budget of failed credentials
/// is spent (`rate_limit.classes.unauthenticated`), but are otherwise not limited.
fn rate_limited_routes(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    let header = |what: &str| serde_json::json!({"description": what, "schema": {"type": "integer", "minimum": 0}});
    let headers = serde_json::json!({
        "RateLimit-Limit": header("requests per period of this route's class"),
        "RateLimit-Remaining": header("requests left now"),
        "RateLimit-Reset": header("seconds until the window is empty again"),
    });
    for (path, item) in paths.iter_mut() {
        let limited = crate::http::rate_limit::limited(path);
        // Every limited route is under `/api/v1/`.
        let credentials = path.starts_with("/api/v1/");
        let Some(item) = item.as_object_mut().filter(|_| credentials) else {
            continue;
        };
        for operation in item.values_mut() {
            let Some(responses) = operation
                .get_mut("responses")
                .and_then(|r| r.as_object_mut())
            else {
                continue;
            };
            for response in responses.values_mut().filter(|_| limited) {
                if let Some(response) = response.as_object_mut().filter(|r| !r.contains_key("$ref"))
                {
                    let own = response
                        .entry("headers")
                        .or_insert_with(|| serde_json::json!({}));
                    if let (Some(own), Some(add)) = (own.as_object_mut(), headers.as_object()) {
                        own.extend(add.clone());
                    }
                }
            }
            responses.insert(
                "429".into(),
                serde_json::json!({"$ref": "#/components/responses/RateLimited"}),
            );
        }
    }
}

fn camel_case_links(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Object(links)) = map.get_mut("links") {
                for link in links.values_mut() {
                    if let serde_json::Value::Object(link) = link {
                        for (from, to) in [
                            ("operation_id", "operationId"),
                            ("operation_ref", "operationRef"),
                            ("request_body", "requestBody"),
                        ] {
                            if let Some(v) = link.remove(from) {
                                link.insert(to.to_owned(), v);
                            }
                        }
                    }
                }
            }
            map.values_mut().for_each(camel_case_links);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(camel_case_links),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> serde_json::Value {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        camel_case_links(&mut doc);
        rate_limited_routes(&mut doc);
        doc
    }

    #[test]
    fn request_bodies_are_described_from_the_types_with_their_bounds() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let patch = &schemas["ProductPatchBody"];
        assert_eq!(patch["minProperties"], 1, "{patch}");
        assert_eq!(patch["additionalProperties"], false, "{patch}");
        let new = &schemas["NewProductBody"]["properties"];
        assert_eq!(new["sku"]["maxLength"], 64);
        assert_eq!(new["price_cents"]["minimum"], 0);
        assert_eq!(
            schemas["CheckoutBody"]["properties"]["items"]["maxItems"],
            50
        );
        let create = &doc["paths"]["/api/v1/products"]["post"];
        assert_eq!(
            create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/NewProductBody"
        );
        for status in ["400", "401", "409", "413", "415", "422", "503"] {
            assert!(create["responses"].get(status).is_some(), "{status}");
        }
        let links = &create["responses"]["201"]["links"];
        assert_eq!(links["GetProduct"]["operationId"], "getProduct", "{links}");
        let list = &doc["paths"]["/api/v1/products"]["get"]["parameters"];
        let limit = list
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "limit"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(limit["schema"]["maximum"], 100, "{limit}");
        let patch_op = &doc["paths"]["/api/v1/products/{id}"]["patch"]["responses"];
        for status in ["412", "428"] {
            assert!(patch_op.get(status).is_some(), "{status}");
        }
    }
}
