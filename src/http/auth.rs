//! Authentication as extractors: a handler that takes `MerchantAuth` or `AdminAuth` runs only
//! for a valid bearer credential.

use crate::domain::merchant::hash_api_key;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::merchants::FindByKey;
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use sha2::{Digest, Sha256};
use std::future::{ready, Ready};
use uuid::Uuid;

fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn state(req: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
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
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = bearer(req).map(hash_api_key);
        let state = state(req);
        Box::pin(async move {
            let hash = token.ok_or(ApiError::Unauthorized)?;
            let merchant_id = state?
                .db
                .run(FindByKey(hash))
                .await?
                .ok_or(ApiError::Unauthorized)?;
            Ok(MerchantAuth { merchant_id })
        })
    }
}

/// A request carrying the configured admin token. With no token configured, admin endpoints
/// refuse everyone.
pub struct AdminAuth;

impl FromRequest for AdminAuth {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let allowed = match (state(req), bearer(req)) {
            (Ok(state), Some(token)) => state
                .settings
                .admin
                .token
                .as_ref()
                // Comparing digests keeps the time independent of where the texts differ.
                .is_some_and(|expected| Sha256::digest(expected.expose()) == Sha256::digest(token)),
            _ => false,
        };
        ready(if allowed {
            Ok(AdminAuth)
        } else {
            Err(ApiError::Unauthorized)
        })
    }
}
