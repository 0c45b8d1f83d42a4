//! The HTTP layer's one error type, mapped once to `application/problem+json` (RFC 9457).
//! 5xx causes are logged with the request id and never sent.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use rampart_actors::{CallError, DbError, LoadError};
use serde::Serialize;

tokio::task_local! {
    /// The current request's id, set by the request-id middleware around the whole request.
    pub static REQUEST_ID: String;
}

pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad request: {detail}")]
    BadRequest {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("not found")]
    NotFound,
    /// The method `allow` names is the one the resource takes.
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("conflict: {detail}")]
    Conflict {
        kind: &'static str,
        title: &'static str,
        detail: String,
    },
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("precondition required")]
    PreconditionRequired,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("unprocessable: {detail}")]
    Unprocessable {
        kind: &'static str,
        title: &'static str,
        detail: String,
    },
    #[error("rate limited")]
    RateLimited { retry_after: u64 },
    #[error("overloaded")]
    Overloaded { retry_after: u64 },
    #[error("unavailable: {detail}")]
    Unavailable { detail: String, retry_after: u64 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::BadRequest {
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    pub fn bad_field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::BadRequest {
            detail: format!("{field}: {message}"),
            errors: vec![FieldError::new(field, message)],
        }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad-request", "Malformed request"),
            Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Missing or invalid credentials",
            ),
            NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            Conflict { kind, title, .. } => (StatusCode::CONFLICT, kind, title),
            PreconditionFailed => (
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
            ),
            PreconditionRequired => (
                StatusCode::PRECONDITION_REQUIRED,
                "precondition-required",
                "Precondition required",
            ),
            PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid request",
            ),
            Unprocessable { kind, title, .. } => (StatusCode::UNPROCESSABLE_ENTITY, kind, title),
            RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            Overloaded { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Service overloaded",
            ),
            Unavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ),
        }
    }

    fn detail(&self) -> String {
        use ApiError::*;
        match self {
            BadRequest { detail, .. }
            | Conflict { detail, .. }
            | Unprocessable { detail, .. }
            | Unavailable { detail, .. } => detail.clone(),
            Unauthorized => "send `Authorization: Bearer <key>` with a valid key".into(),
            NotFound => "no such resource".into(),
            MethodNotAllowed { .. } => "this resource does not support that method".into(),
            PreconditionFailed => {
                "the resource changed: If-Match does not match its current ETag".into()
            }
            PreconditionRequired => {
                "send If-Match with the product's current ETag to set its stock".into()
            }
            PayloadTooLarge => "the request body exceeds the configured limit".into(),
            UnsupportedMediaType => "send `Content-Type: application/json`".into(),
            Validation(errors) => errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "),
            RateLimited { .. } => {
                "this client made too many requests of this kind; retry after the indicated delay"
                    .into()
            }
            Overloaded { .. } => "too much work in flight; retry after the indicated delay".into(),
            Internal(_) => {
                "an unexpected error occurred; it has been logged with this request id".into()
            }
        }
    }
}

/// An error, as RFC 9457 `application/problem+json`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A relative URI naming the kind of problem, such as `/problems/insufficient-stock`.
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    /// The request's `X-Request-Id`.
    request_id: Option<String>,
    /// For validation failures: one entry per invalid field.
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<Vec<FieldError>>,
}

/// Builds a problem+json response; also used for errors raised outside handlers.
pub fn problem_response(
    status: StatusCode,
    kind: &str,
    title: &str,
    detail: String,
    errors: Option<&[FieldError]>,
) -> HttpResponse {
    let body = Problem {
        kind: format!("/problems/{kind}"),
        title: title.to_owned(),
        status: status.as_u16(),
        detail,
        request_id: current_request_id(),
        errors: errors.map(<[FieldError]>::to_vec),
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    HttpResponse::build(status)
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        ))
        .body(json)
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.parts().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, kind, title) = self.parts();
        if let ApiError::Internal(cause) = self {
            tracing::error!(request_id = current_request_id().as_deref(), cause = %cause, "internal error");
        }
        let errors = match self {
            ApiError::Validation(errors) => Some(errors.as_slice()),
            ApiError::BadRequest { errors, .. } if !errors.is_empty() => Some(errors.as_slice()),
            _ => None,
        };
        let mut response = problem_response(status, kind, title, self.detail(), errors);
        if let ApiError::Overloaded { retry_after }
        | ApiError::RateLimited { retry_after }
        | ApiError::Unavailable { retry_after, .. } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        if let ApiError::MethodNotAllowed { allow } = self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let ApiError::Unauthorized = self {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ApiError::from_db(&e)
    }
}

impl ApiError {
    fn from_db(e: &DbError) -> Self {
        match e {
            DbError::Overloaded => ApiError::Overloaded { retry_after: 1 },
            DbError::Timeout => ApiError::Unavailable {
                detail: "the database did not answer in time".into(),
                retry_after: 1,
            },
            DbError::Unavailable(cause) => {
                tracing::warn!(%cause, "database unavailable");
                ApiError::Unavailable {
                    detail: "the database is unavailable".into(),
                    retry_after: 2,
                }
            }
            DbError::CircuitOpen { retry_after } => ApiError::Unavailable {
                detail: "the database is failing; requests to it are paused".into(),
                retry_after: retry_after.as_secs_f64().ceil().max(1.0) as u64,
            },
            DbError::Conflict(_) => ApiError::Unavailable {
                detail: "concurrent updates collided; retry".into(),
                retry_after: 1,
            },
            // Expected violations are mapped where they can happen (a duplicate SKU); any other
            // is a bug, logged with its name and never shown.
            DbError::Constraint { name, kind } => ApiError::Internal(format!(
                "unexpected constraint violation: {name} ({kind:?})"
            )),
            DbError::InvalidInput(cause) => {
                tracing::info!(%cause, "database refused a value of the request");
                ApiError::bad_request(
                    "a value in the request cannot be stored or searched (text with a NUL byte?)",
                )
            }
            DbError::Other(cause) => ApiError::Internal(cause.clone()),
            DbError::Internal => ApiError::Internal("database command panicked".into()),
        }
    }

    /// The answer to a failed cache load: the database's error it carries, or the cache's own.
    pub fn from_load(e: &LoadError) -> Self {
        if let Some(db) = e.downcast_ref::<DbError>() {
            return ApiError::from_db(db);
        }
        if let Some(call) = e.downcast_ref::<CallError>() {
            return ApiError::from(*call);
        }
        ApiError::Internal(format!("cache load: {e}"))
    }

    /// A 503: the request may be retried, or answered from a stale copy.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ApiError::Overloaded { .. } | ApiError::Unavailable { .. }
        )
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        ApiError::from(DbError::from(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;
    use rampart_actors::db::ConstraintKind;

    #[test]
    fn an_unexpected_constraint_violation_is_a_500_that_does_not_name_it() {
        let error = ApiError::from(DbError::Constraint {
            name: "orders_secret_internal_key".into(),
            kind: ConstraintKind::Unique,
        });
        let response = error.error_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = response.into_body().try_into_bytes().unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("orders_secret_internal_key"), "{text}");
        assert!(text.contains("/problems/internal"), "{text}");
    }

    #[test]
    fn a_401_carries_www_authenticate_bearer() {
        let response = ApiError::Unauthorized.error_response();
        assert_eq!(
            response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
    }
}
