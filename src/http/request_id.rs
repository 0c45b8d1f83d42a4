//! `X-Request-Id`: the client's value when it is sane, else a new one; a tracing span per
//! request; the id available to error rendering through [`crate::error::REQUEST_ID`].

use crate::error::REQUEST_ID;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
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
    // for the request (a slow query on the Db thread included) carries its id.
    let span = tracing::error_span!("request", request_id = %id, method = %req.method(), path = %req.path());
    let mut response = REQUEST_ID
        .scope(id.clone(), next.call(req).instrument(span))
        .await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    Ok(response)
}
