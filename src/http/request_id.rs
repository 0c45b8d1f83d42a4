//! `X-Request-Id`: the client's value when it is sane, else a new one; a tracing span per
//! request; the id available to error rendering through [`crate::error::REQUEST_ID`].

use crate::error::REQUEST_ID;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use tracing::Instrument;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

fn sane(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| sane(v))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    // At ERROR level so the span is on whatever the filter lets through: every line logged
    // for the request (a slow query on the Db thread included) carries its id. A traced request
    // (sampled here, or by its client) gets its span under the exported target; its trace name
    // is the route template, known once the request is routed.
    macro_rules! request_span {
        ($($target:tt)*) => {
            tracing::error_span!(
                $($target)*
                "request",
                request_id = %id,
                method = %req.method(),
                path = %req.path(),
                otel.kind = "server",
                otel.status_code = tracing::field::Empty,
                http.response.status_code = tracing::field::Empty,
                trace_id = tracing::field::Empty,
            )
        };
    }
    let span = match crate::telemetry::traced_parent(req.headers()) {
        Some(parent) => {
            let span = request_span!(target: rampart_actors::trace::TARGET,);
            crate::telemetry::adopt(&span, parent);
            span
        }
        None => request_span!(),
    };
    let mut response = REQUEST_ID
        .scope(id.clone(), next.call(req).instrument(span.clone()))
        .await?;
    // Traced requests only: a field recorded on any request's span is formatted again by the
    // JSON log layer (about a third of a storefront read's throughput at the default ratio).
    if span
        .metadata()
        .is_some_and(|m| m.target() == rampart_actors::trace::TARGET)
    {
        let request = response.request();
        let route = request
            .extensions()
            .get::<crate::http::metrics::RouteLabel>()
            .map_or("unmatched", |r| r.0);
        let name = format!("{} {route}", request.method());
        let status = response.status();
        crate::telemetry::rename(&span, name);
        span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    Ok(response)
}
