//! The responses the API description names: every problem+json answer a handler may give,
//! declared once and named by each operation, and the bodies of the health endpoints.

use crate::error::Problem;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::{ToResponse, ToSchema};

/// Malformed request: bad JSON, a bad query parameter, cursor, sort or filter.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct BadRequest(pub Problem);

/// Missing or invalid credentials (checked before the body is read).
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(("WWW-Authenticate" = String, description = "`Bearer`"))
)]
pub struct Unauthorized(pub Problem);

/// No such resource (also another merchant's).
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct NotFound(pub Problem);

/// Conflict with the current state.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct Conflict(pub Problem);

/// `If-Match` names no current version of the resource.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct PreconditionFailed(pub Problem);

/// Setting `stock` needs `If-Match` with the product's current `ETag`.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct PreconditionRequired(pub Problem);

/// The body exceeds `server.body_limit_bytes`.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct PayloadTooLarge(pub Problem);

/// The body is not `application/json`.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct UnsupportedMediaType(pub Problem);

/// Well-formed but invalid: `errors` names each field.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct Unprocessable(pub Problem);

/// Overloaded, past the request's deadline, or a dependency is down. A write answered 503 did
/// not happen and will not happen later: retry it.
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(("Retry-After" = u32, description = "seconds"))
)]
pub struct Unavailable(pub Problem);

/// Past this client's (or this API key's) rate limit for the class of the route.
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(
        ("Retry-After" = u32, description = "seconds until a request is allowed again"),
        ("RateLimit-Limit" = u32, description = "requests per period of this class"),
        ("RateLimit-Remaining" = u32, description = "always 0 here"),
        ("RateLimit-Reset" = u32, description = "seconds; equal to `Retry-After`"),
    )
)]
pub struct RateLimited(pub Problem);

/// `GET /health`.
#[derive(Serialize, ToSchema)]
pub struct Liveness {
    /// Always `ok` while the process serves.
    pub status: String,
}

/// `GET /health/ready`: one entry per dependency and actor under `checks`.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, `degraded` (still 200) or `unready` (503).
    pub status: String,
    #[schema(value_type = Object)]
    pub checks: BTreeMap<String, serde_json::Value>,
}
