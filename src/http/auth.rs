//! Authentication before anything else: [`merchant_gate`] and [`admin_gate`] wrap the protected
//! resources and answer 401 (with `WWW-Authenticate: Bearer`) before a byte of the body is read,
//! so a bad key is 401 whatever the body. The extractors `MerchantAuth` and `AdminAuth`
//! ([`crate::http::credentials`]) then hand the handler what the gate established.
//!
//! An API key is looked up in PostgreSQL (by its SHA-256) at most once a while: the state's
//! [`KnownKeys`](crate::known_keys::KnownKeys) keep the hashes of keys recently found good, with
//! their merchant, and of keys recently found bad, each table bounded. The rate limit at the
//! edge reads the good keys too: a client whose budget of failed credentials is spent still gets
//! through with a key known good ([`crate::http::rate_limit`]).

use crate::domain::merchant::{key_hash, KeyHash};
use crate::error::ApiError;
use crate::http::credentials::{app_state, bearer_token, is_admin_token, AdminAuth, MerchantAuth};
use crate::http::{rate_limit, refusal};
use crate::state::AppState;
use crate::store::merchants::FindByKey;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, ResponseError};

/// The merchant of the request's key: known good or bad without a lookup for a while, else
/// looked up (and remembered).
async fn merchant(
    state: &AppState,
    req: &HttpRequest,
) -> Result<(MerchantAuth, KeyHash), ApiError> {
    let hash = bearer_token(req.headers())
        .map(key_hash)
        .ok_or(ApiError::Unauthorized)?;
    let known = &state.known_keys;
    if let Some(merchant_id) = known.good(&hash) {
        return Ok((MerchantAuth { merchant_id }, hash));
    }
    if known.bad(&hash) {
        return Err(ApiError::Unauthorized);
    }
    // Only an answer is remembered: a failed lookup (503) says nothing of the key.
    match state.db.run(FindByKey(hash.to_vec())).await? {
        Some(merchant_id) => {
            known.remember_good(hash, merchant_id);
            Ok((MerchantAuth { merchant_id }, hash))
        }
        None => {
            known.remember_bad(hash);
            Err(ApiError::Unauthorized)
        }
    }
}

/// The refusal, rendered here (inside the request's scope, so it carries the request id).
fn refuse<B>(req: ServiceRequest, error: ApiError) -> ServiceResponse<EitherBody<B>> {
    req.into_response(error.error_response())
        .map_into_right_body()
}

/// Authenticates a merchant's API key before the handler (and its body) is reached, then
/// counts the request against the merchant class of the rate limits: only keys that
/// authenticated count there. (A key the rate limit found good already came authenticated and
/// counted.)
pub async fn merchant_gate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if req.extensions().contains::<MerchantAuth>() {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let state = match app_state(req.request()) {
        Ok(state) => state,
        Err(e) => return Ok(refuse(req, e)),
    };
    match merchant(&state, req.request()).await {
        Ok((auth, hash)) => {
            req.extensions_mut().insert(auth);
            if let Some(verdict) = rate_limit::charge_merchant(&state, &hash).await {
                req.extensions_mut().insert(rate_limit::Charged(verdict));
                if !verdict.allowed {
                    return Ok(refusal::refuse(req, rate_limit::refusal(&verdict)).await);
                }
            }
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
    let allowed = match (app_state(req.request()), bearer_token(req.headers())) {
        (Ok(state), Some(token)) => is_admin_token(&state, token),
        _ => false,
    };
    if !allowed {
        return Ok(refuse(req, ApiError::Unauthorized));
    }
    req.extensions_mut().insert(AdminAuth);
    Ok(next.call(req).await?.map_into_left_body())
}
