//! The ceilings the load benchmarks are measured against, in one process:
//! - `GET /static`: a bare actix-web endpoint answering a fixed body the size of a product
//!   (the HTTP ceiling: no middleware, no database);
//! - `GET /static-page`, and any other path (the storefront list URLs, cursors and all, so the
//!   request lines parsed are the service's own): the same, answering a storefront list page's
//!   body (the ceiling of the list pages, whose bodies are twenty products long);
//! - `GET /direct/stores/{merchant_id}/products/{id}`: the storefront product read done directly
//!   on a deadpool pool in the handler, with the service's own middleware, SQL and response
//!   headers, but no actor hop (the actor tax is the service's figure over this one).
//!
//! Configured by environment: `CEILING_PORT`, `CEILING_WORKERS`, `CEILING_DATABASE_URL`,
//! `CEILING_BODY_FILE` (the static body), `CEILING_PAGE_FILE` (the static page), `CEILING_POOL_SIZE`.

use actix_web::http::header;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rampart::http::metrics::Metrics;
use rampart::http::{compress, metrics, problems, request_id};
use rampart::store::products;
use rampart_actors::{Caller, Conn, DbCommand};
use std::str::FromStr;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The static bodies: a product's, and a list page's.
struct Bodies {
    product: web::Bytes,
    page: web::Bytes,
}

async fn static_body(bodies: web::Data<Bodies>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(bodies.product.clone())
}

async fn static_page(bodies: web::Data<Bodies>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(bodies.page.clone())
}

async fn direct(
    pool: web::Data<Pool>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> HttpResponse {
    let (Ok(merchant_id), Ok(id)) = (
        uuid::Uuid::parse_str(&path.0),
        uuid::Uuid::parse_str(&path.1),
    ) else {
        return HttpResponse::NotFound().finish();
    };
    let Ok(client) = pool.get().await else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut conn = Conn::new(client, Caller::new(deadline));
    let read = products::Get {
        merchant_id,
        id,
        active_only: true,
    };
    match read.run(&mut conn).await {
        Ok(Some(product)) => {
            let etag = product.etag();
            let fresh = req
                .headers()
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == etag);
            let mut response = if fresh {
                HttpResponse::NotModified()
            } else {
                HttpResponse::Ok()
            };
            response
                .insert_header((header::ETAG, etag))
                .insert_header((header::CACHE_CONTROL, "public, max-age=0, must-revalidate"));
            if fresh {
                response.finish()
            } else {
                response.json(&product)
            }
        }
        Ok(None) => HttpResponse::NotFound().finish(),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

fn main() -> std::io::Result<()> {
    let port: u16 = env("CEILING_PORT", "8090")
        .parse()
        .map_err(std::io::Error::other)?;
    let workers: usize = env("CEILING_WORKERS", "2")
        .parse()
        .map_err(std::io::Error::other)?;
    let pool_size: usize = env("CEILING_POOL_SIZE", "16")
        .parse()
        .map_err(std::io::Error::other)?;
    let bodies = Bodies {
        product: web::Bytes::from(std::fs::read(env(
            "CEILING_BODY_FILE",
            "bench/product.json",
        ))?),
        page: web::Bytes::from(std::fs::read(env("CEILING_PAGE_FILE", "bench/page.json"))?),
    };
    let pg = tokio_postgres::Config::from_str(&env(
        "CEILING_DATABASE_URL",
        "postgres://rampart@127.0.0.1/rampart",
    ))
    .map_err(std::io::Error::other)?;
    actix_web::rt::System::new().block_on(async move {
        let manager = Manager::from_config(
            pg,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(std::io::Error::other)?;
        let metrics = web::Data::new(Metrics::new().map_err(std::io::Error::other)?);
        let pool = web::Data::new(pool);
        let bodies = web::Data::new(bodies);
        HttpServer::new(move || {
            App::new()
                .app_data(pool.clone())
                .app_data(bodies.clone())
                .app_data(metrics.clone())
                .route("/static", web::get().to(static_body))
                .route("/static-page", web::get().to(static_page))
                .default_service(web::get().to(static_page))
                .service(
                    web::scope("/direct")
                        .route("/stores/{merchant_id}/products/{id}", web::get().to(direct))
                        .wrap(problems::fallback())
                        .wrap(from_fn(compress::middleware))
                        .wrap(from_fn(metrics::middleware))
                        .wrap(from_fn(request_id::middleware)),
                )
        })
        .workers(workers)
        .backlog(4096)
        .max_connections(25000)
        .bind(("127.0.0.1", port))?
        .run()
        .await
    })
}
