//! The rate limit at the edge: every request of a limited route is decided by the `Limiter`'s
//! [`RateLimits`] against its own class only: storefront reads and checkouts per client, merchant
//! endpoints per API key that authenticated (its SHA-256, never the key itself, names the
//! bucket). A client of a per-client class is its IPv4 address, or the network of its IPv6
//! address (`rate_limit.ipv6_prefix` bits, /64 by default; [`client_ip::client_key`]). Ops,
//! admin and the API description are never limited, but for failed credentials.
//!
//! Failed credentials (class `unauthenticated`, per client): every 401 answered under
//! `/api/v1/` counts (no key, a wrong key, a wrong admin token). The edge runs before the gates
//! that authenticate (`merchant_gate`, `admin_gate`), so a request with credentials goes:
//! - a key the service knows to be good ([`crate::known_keys::KnownKeys`]) is counted against
//!   the merchant class here, and goes on authenticated: no lookup, and a spent budget of
//!   failed credentials does not stop it (a neighbour behind the same address cannot lock a
//!   merchant out); so does the configured admin token on admin and ops routes;
//! - any other request with credentials (a key not known good, a token that is not the admin
//!   token) spends one unit of the client's budget of failed credentials before they are
//!   checked ([`RateLimits::check`]): spent, it is 429 at once, without a database lookup; so
//!   concurrent requests with distinct bad keys cost at most the budget in lookups. A key that
//!   then authenticates is remembered good, so it spends at most once a
//!   [`GOOD_FOR`](crate::known_keys::GOOD_FOR);
//! - a request without credentials reads the budget without spending it ([`RateLimits::peek`]):
//!   spent, it is 429 at once; else its 401 is counted when it comes back;
//! - otherwise it goes on: the merchant gate authenticates it (a bad key is remembered, so it
//!   costs no lookup again for a while) and counts a key that authenticated against the merchant
//!   class ([`charge_merchant`]); a 401 coming back was paid for already, or is counted then.
//!
//! Every response of a limited route carries `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset` (seconds until the key's window is empty again): of the merchant class once
//! the key counted there, else of the client's budget of failed credentials (a 401 tells what is
//! left of it). A refusal is 429 with `Retry-After`: the seconds until a request is allowed
//! again, rounded up, which is also its `RateLimit-Reset`, so a client that waits as told is
//! admitted.

use crate::domain::merchant::{key_hash, KeyHash};
use crate::error::ApiError;
use crate::http::credentials::{bearer_token, is_admin_token, MerchantAuth};
use crate::http::{client_ip, refusal};
use crate::state::AppState;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse, ResponseError};
use rampart_actors::Verdict;
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

/// Where a request counts.
enum Target {
    /// Storefront reads and checkouts: this class, per client.
    Client(&'static str),
    /// The rest of the API: merchant endpoints (and unknown paths) or, `admin`, the admin and
    /// ops endpoints, which only failed credentials count on.
    Api { admin: bool },
}

fn classify(req: &ServiceRequest) -> Option<Target> {
    // The path as the router matches it (percent-decoded but for `%`, `/` and `+`): the raw
    // `/%61pi/v1/products` is routed as `/api/v1/products`, so it must count as that.
    let path = req.match_info().as_str();
    if let Some(rest) = path.strip_prefix("/api/v1/stores/") {
        let checkout = req.method() == Method::POST && rest.ends_with("/orders");
        return Some(Target::Client(if checkout {
            "checkout"
        } else {
            "storefront"
        }));
    }
    if !path.starts_with("/api/v1/") {
        return None;
    }
    Some(Target::Api {
        admin: !limited(path),
    })
}

/// The client a per-client class counts the request under (`None` without a peer address).
fn client(req: &ServiceRequest, state: &AppState) -> Option<String> {
    client_ip::of(req, &state.trusted_proxies)
        .map(|ip| client_ip::client_key(ip, state.settings.rate_limit.ipv6_prefix))
}

/// The merchant class's bucket of an API key: the first half of its SHA-256.
fn merchant_bucket(hash: &KeyHash) -> String {
    format!("key:{}", hex::encode(&hash[..16]))
}

/// A request whose key authenticated (`hash`) counted against the merchant class; `None`: limits
/// are off.
pub async fn charge_merchant(state: &AppState, hash: &KeyHash) -> Option<Verdict> {
    let limits = state.limits.as_ref()?;
    let class = limits.class("merchant")?;
    Some(limits.check(class, &merchant_bucket(hash)).await)
}

/// The merchant class's verdict on a request, left by whoever counted it there for the headers
/// of its response.
#[derive(Debug, Clone, Copy)]
pub struct Charged(pub Verdict);

fn seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn describe(headers: &mut HeaderMap, verdict: &Verdict, reset: u64) {
    headers.insert(LIMIT, HeaderValue::from(verdict.limit));
    headers.insert(REMAINING, HeaderValue::from(verdict.remaining));
    headers.insert(RESET, HeaderValue::from(reset));
}

/// The headers of an answer given under `verdict` (not a refusal of it).
fn tell(headers: &mut HeaderMap, verdict: &Verdict) {
    describe(headers, verdict, seconds(verdict.reset_after));
}

/// The 429 of a refused `verdict`, with `Retry-After` and the `RateLimit-*` headers.
pub fn refusal(verdict: &Verdict) -> HttpResponse {
    let wait = seconds(verdict.retry_after).max(1);
    let mut response = ApiError::RateLimited { retry_after: wait }.error_response();
    describe(response.headers_mut(), verdict, wait);
    response
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    // The request is classified (its client address and key formatted) only when limits are on.
    let Some(state) = req
        .app_data::<web::Data<AppState>>()
        .filter(|state| state.limits.is_some())
    else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let target = match classify(&req) {
        Some(Target::Client(class)) => {
            let decided = match (state.limits.as_ref(), client(&req, state)) {
                (Some(limits), Some(key)) => match limits.class(class) {
                    Some(index) => Some(limits.check(index, &key).await),
                    None => None,
                },
                _ => None,
            };
            let Some(verdict) = decided else {
                return Ok(next.call(req).await?.map_into_left_body());
            };
            if !verdict.allowed {
                return Ok(refusal::refuse(req, refusal(&verdict)).await);
            }
            let mut response = next.call(req).await?;
            tell(response.headers_mut(), &verdict);
            return Ok(response.map_into_left_body());
        }
        Some(Target::Api { admin }) => admin,
        None => return Ok(next.call(req).await?.map_into_left_body()),
    };
    let state = state.clone();
    credentials(req, next, &state, target).await
}

/// The API but the storefront: see the module's header.
async fn credentials<B: MessageBody>(
    req: ServiceRequest,
    next: Next<B>,
    state: &AppState,
    admin: bool,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let Some(limits) = state.limits.as_ref() else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let token = bearer_token(req.headers());
    if admin {
        if token.is_some_and(|t| is_admin_token(state, t)) {
            return Ok(next.call(req).await?.map_into_left_body());
        }
    } else if let Some(hash) = token.map(key_hash) {
        if let Some(merchant_id) = state.known_keys.good(&hash) {
            if let Some(verdict) = charge_merchant(state, &hash).await {
                if !verdict.allowed {
                    return Ok(refusal::refuse(req, refusal(&verdict)).await);
                }
                req.extensions_mut().insert(MerchantAuth { merchant_id });
                let mut response = next.call(req).await?;
                tell(response.headers_mut(), &verdict);
                return Ok(response.map_into_left_body());
            }
        }
    }
    let (Some(class), Some(client)) = (limits.class("unauthenticated"), client(&req, state)) else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    // A credential not known good is paid for before it is checked (a lookup, a comparison with
    // the admin token): counted after its 401, concurrent requests with distinct keys would each
    // pass a peek and cost a lookup while the budget still showed room. A key that then
    // authenticates is remembered good, so it pays at most once a `GOOD_FOR`. A request
    // without credentials costs no check: it only reads the budget, and counts on its 401.
    let paid = token.is_some();
    let standing = if paid {
        limits.check(class, &client).await
    } else {
        match limits.peek(class, &client).await {
            Some(standing) => standing,
            None => return Ok(next.call(req).await?.map_into_left_body()),
        }
    };
    if !standing.allowed {
        return Ok(refusal::refuse(req, refusal(&standing)).await);
    }
    let mut response = next.call(req).await?;
    let verdict = if response.status() == StatusCode::UNAUTHORIZED {
        Some(if paid {
            standing
        } else {
            limits.check(class, &client).await
        })
    } else if admin {
        // Admin and ops answers that are not failures are not limited: no headers.
        None
    } else {
        let charged = response.request().extensions().get::<Charged>().copied();
        Some(charged.map_or(standing, |Charged(v)| v))
    };
    if let Some(verdict) = verdict {
        tell(response.headers_mut(), &verdict);
    }
    Ok(response.map_into_left_body())
}
