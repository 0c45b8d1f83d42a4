//! The rate limit at the edge: every request of a limited route is decided by the `Limiter`'s
//! [`RateLimits`] against its own class only: storefront reads and checkouts per client address,
//! merchant endpoints per API key (its SHA-256, never the key itself, names the bucket; requests
//! without a key count per client address). Ops, admin and the API description are never limited.
//!
//! Every response of a limited route carries `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset` (seconds until the key's window is empty again). A refusal is 429 with
//! `Retry-After`: the seconds until a request is allowed again, rounded up, which is also its
//! `RateLimit-Reset`, so a client that waits as told is admitted.

use crate::error::ApiError;
use crate::http::{client_ip, refusal};
use crate::state::AppState;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use rampart_actors::Verdict;
use sha2::{Digest, Sha256};
use std::time::Duration;

const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Whether requests to `path` are rate limited: the API but its admin and ops endpoints (also
/// what the OpenAPI description marks as such).
pub fn limited(path: &str) -> bool {
    path.starts_with("/api/v1/")
        && !path.starts_with("/api/v1/admin/")
        && !path.starts_with("/api/v1/ops/")
}

/// The class a request counts against and the key it counts under; `None`: not limited.
fn classify(req: &ServiceRequest, state: &AppState) -> Option<(&'static str, String)> {
    let path = req.path();
    let client = || client_ip::of(req, &state.trusted_proxies).map(|ip| ip.to_string());
    if let Some(rest) = path.strip_prefix("/api/v1/stores/") {
        let checkout = req.method() == Method::POST && rest.ends_with("/orders");
        let class = if checkout { "checkout" } else { "storefront" };
        return Some((class, client()?));
    }
    if !limited(path) {
        return None;
    }
    let key = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|key| {
            format!(
                "key:{}",
                hex::encode(&Sha256::digest(key.trim().as_bytes())[..16])
            )
        });
    Some((
        "merchant",
        key.or_else(|| Some(format!("ip:{}", client()?)))?,
    ))
}

fn seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn describe(headers: &mut HeaderMap, verdict: &Verdict, reset: u64) {
    headers.insert(LIMIT, HeaderValue::from(verdict.limit));
    headers.insert(REMAINING, HeaderValue::from(verdict.remaining));
    headers.insert(RESET, HeaderValue::from(reset));
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    // The request is classified (its client address and key formatted) only when limits are on.
    let target = req.app_data::<web::Data<AppState>>().and_then(|state| {
        let limits = state.limits.as_ref()?;
        let (class, key) = classify(&req, state)?;
        Some((limits, limits.class(class)?, key))
    });
    let decided = match target {
        Some((limits, index, key)) => Some(limits.check(index, &key).await),
        None => None,
    };
    let Some(verdict) = decided else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    if !verdict.allowed {
        let wait = seconds(verdict.retry_after).max(1);
        let mut response = ApiError::RateLimited { retry_after: wait }.error_response();
        describe(response.headers_mut(), &verdict, wait);
        return Ok(refusal::refuse(req, response).await);
    }
    let mut response = next.call(req).await?;
    describe(
        response.headers_mut(),
        &verdict,
        seconds(verdict.reset_after),
    );
    Ok(response.map_into_left_body())
}
