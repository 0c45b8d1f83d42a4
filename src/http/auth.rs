//! Authentication before anything else: [`merchant_gate`] and [`admin_gate`] wrap the protected
//! resources and answer 401 (with `WWW-Authenticate: Bearer`) before a byte of the body is read,
//! so a bad key is 401 whatever the body. The extractors `MerchantAuth` and `AdminAuth` then
//! hand the handler what the gate established.

use crate::domain::merchant::hash_api_key;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::merchants::FindByKey;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, ResponseError};
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

async fn merchant(req: &HttpRequest) -> Result<MerchantAuth, ApiError> {
    let hash = bearer(req)
        .map(hash_api_key)
        .ok_or(ApiError::Unauthorized)?;
    let merchant_id = state(req)?
        .db
        .run(FindByKey(hash))
        .await?
        .ok_or(ApiError::Unauthorized)?;
    Ok(MerchantAuth { merchant_id })
}

/// The refusal, rendered here (inside the request's scope, so it carries the request id).
fn refuse<B>(req: ServiceRequest, error: ApiError) -> ServiceResponse<EitherBody<B>> {
    req.into_response(error.error_response())
        .map_into_right_body()
}

/// Authenticates a merchant's API key before the handler (and its body) is reached.
pub async fn merchant_gate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    match merchant(req.request()).await {
        Ok(auth) => {
            req.extensions_mut().insert(auth);
            Ok(next.call(req).await?.map_into_left_body())
        }
        Err(e) => Ok(refuse(req, e)),
    }
}

/// Lets through only requests carrying the configured admin token. With no token configured,
/// admin endpoints refuse everyone.
pub async fn admin_gate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let allowed = match (state(req.request()), bearer(req.request())) {
        (Ok(state), Some(token)) => state
            .settings
            .admin
            .token
            .as_ref()
            // Comparing digests keeps the time independent of where the texts differ.
            .is_some_and(|expected| Sha256::digest(expected.expose()) == Sha256::digest(token)),
        _ => false,
    };
    if !allowed {
        return Ok(refuse(req, ApiError::Unauthorized));
    }
    req.extensions_mut().insert(AdminAuth);
    Ok(next.call(req).await?.map_into_left_body())
}

/// A request that passed [`admin_gate`].
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
