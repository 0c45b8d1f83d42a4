//! Credentials as the edge reads them: the bearer token of a request, the admin token, and the
//! extractors ([`MerchantAuth`], [`AdminAuth`]) that hand a handler what was established.

use crate::error::ApiError;
use crate::state::AppState;
use actix_web::dev::Payload;
use actix_web::http::header::{self, HeaderMap};
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use sha2::{Digest, Sha256};
use std::future::{ready, Ready};
use uuid::Uuid;

/// The token of an `Authorization: Bearer <token>` header; the scheme's name in any case
/// (RFC 9110: `bearer`, `BEARER`).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether `token` is the configured admin token (never, with none configured).
pub fn is_admin_token(state: &AppState, token: &str) -> bool {
    state
        .settings
        .admin
        .token
        .as_ref()
        // Comparing digests keeps the time independent of where the texts differ.
        .is_some_and(|expected| Sha256::digest(expected.expose()) == Sha256::digest(token))
}

/// The application state of the request's app.
pub fn app_state(req: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::Internal("application state missing".into()))
}

/// The merchant whose API key the request carries.
#[derive(Debug, Clone, Copy)]
pub struct MerchantAuth {
    pub merchant_id: Uuid,
}

impl FromRequest for MerchantAuth {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<MerchantAuth>()
                .copied()
                .ok_or(ApiError::Unauthorized),
        )
    }
}

/// A request that passed the admin gate.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth;

impl FromRequest for AdminAuth {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<AdminAuth>()
                .copied()
                .ok_or(ApiError::Unauthorized),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_scheme_name_is_case_insensitive() {
        for value in ["Bearer k1", "bearer k1", "BEARER k1", "bEaReR  k1 "] {
            assert_eq!(
                bearer_token(&with_authorization(value)),
                Some("k1"),
                "{value}"
            );
        }
        for value in ["Basic k1", "Bearer", "Bearer ", "Bearerk1", "k1"] {
            assert_eq!(bearer_token(&with_authorization(value)), None, "{value}");
        }
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
