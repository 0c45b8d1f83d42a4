//! Error responses made outside our handlers (actix's 404, 405, 413, 415, payload errors) become
//! problem+json like every other error.

use crate::error::problem_response;
use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};

pub fn fallback<B: MessageBody + 'static>() -> ErrorHandlers<B> {
    ErrorHandlers::new().default_handler(to_problem)
}

fn to_problem<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    // Our own error bodies (problem+json, or readiness' JSON report) are kept as they are.
    let is_ours = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("application/problem+json") || v.starts_with("application/json")
        });
    if is_ours {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (kind, title, detail) = describe(status);
    let (req, old) = res.into_parts();
    let mut fresh = problem_response(status, kind, title, detail.to_owned(), None);
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = old.headers().get(&name) {
            fresh.headers_mut().insert(name, v.clone());
        }
    }
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, fresh).map_into_right_body(),
    ))
}

fn describe(status: StatusCode) -> (&'static str, &'static str, &'static str) {
    match status.as_u16() {
        400 => (
            "bad-request",
            "Malformed request",
            "the request could not be parsed",
        ),
        401 => (
            "unauthorized",
            "Missing or invalid credentials",
            "send `Authorization: Bearer <key>` with a valid key",
        ),
        404 => ("not-found", "Not found", "no such resource"),
        405 => (
            "method-not-allowed",
            "Method not allowed",
            "this resource does not support that method",
        ),
        408 => (
            "request-timeout",
            "Request timeout",
            "the request took too long to arrive",
        ),
        413 => (
            "payload-too-large",
            "Request body too large",
            "the request body exceeds the configured limit",
        ),
        415 => (
            "unsupported-media-type",
            "Unsupported media type",
            "send `Content-Type: application/json`",
        ),
        431 => (
            "headers-too-large",
            "Request headers too large",
            "the request headers are too large",
        ),
        503 => (
            "unavailable",
            "Service unavailable",
            "the service cannot take this request now",
        ),
        s if s >= 500 => (
            "internal",
            "Internal server error",
            "an unexpected error occurred; it has been logged with this request id",
        ),
        _ => (
            "client-error",
            "Client error",
            "the request was not accepted",
        ),
    }
}
