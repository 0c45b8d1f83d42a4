//! Authentication before anything else: [`merchant_gate`] and [`admin_gate`] wrap the protected
//! resources and answer 401 (with `WWW-Authenticate: Bearer`) before a byte of the body is read,
//! so a bad key is 401 whatever the body. The extractors `MerchantAuth` and `AdminAuth` then
//! hand the handler what the gate established.
//!
//! An API key is looked up in PostgreSQL (by its SHA-256) at most once a while: [`KnownKeys`]
//! keeps the hashes of keys recently found good, with their merchant, for [`GOOD_FOR`], and of
//! keys recently found bad for [`BAD_FOR`], each table bounded. Keys cannot be revoked or
//! rotated in this code base today; should that come, a revoked key would keep working here for
//! at most [`GOOD_FOR`] (the reason it is short). The rate limit at the edge reads the good
//! keys too: a client whose budget of failed credentials is spent still gets through with a key
//! known good ([`crate::http::rate_limit`]).

use crate::error::ApiError;
use crate::http::{rate_limit, refusal};
use crate::state::AppState;
use crate::store::merchants::FindByKey;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, ResponseError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::{ready, Ready};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};
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

fn bearer(req: &HttpRequest) -> Option<&str> {
    bearer_token(req.headers())
}

/// An API key's SHA-256: what the database stores (`hash_api_key`) and what names it here.
pub type KeyHash = [u8; 32];

pub fn key_hash(token: &str) -> KeyHash {
    Sha256::digest(token.as_bytes()).into()
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

/// How long a key found good is taken as good without asking the database again.
pub const GOOD_FOR: Duration = Duration::from_secs(60);
/// How long a key found bad is refused without asking the database again.
pub const BAD_FOR: Duration = Duration::from_secs(300);
/// Keys each table holds at most.
pub const KNOWN_KEYS_MAX: usize = 10_000;

const SHARDS: usize = 16;

/// One shard: a key hash, what was learnt of it and until when.
type Shard<V> = RwLock<HashMap<KeyHash, (V, Instant)>>;

/// Key hashes and what was learnt of them, each until its expiry; at most `max` entries (a full
/// shard drops its expired entries, then an eighth of the rest).
struct Recent<V> {
    shards: Box<[Shard<V>]>,
    per_shard: usize,
    ttl: Duration,
}

impl<V: Copy> Recent<V> {
    fn new(max: usize, ttl: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            per_shard: max.div_ceil(SHARDS).max(1),
            ttl,
        }
    }

    // The digest's bytes are uniform: its first picks the shard.
    fn shard(&self, hash: &KeyHash) -> &Shard<V> {
        &self.shards[usize::from(hash[0]) % SHARDS]
    }

    fn get(&self, hash: &KeyHash, now: Instant) -> Option<V> {
        let shard = self
            .shard(hash)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard
            .get(hash)
            .filter(|(_, until)| now < *until)
            .map(|(v, _)| *v)
    }

    fn insert(&self, hash: KeyHash, value: V, now: Instant) {
        let mut shard = self
            .shard(&hash)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !shard.contains_key(&hash) && shard.len() >= self.per_shard {
            shard.retain(|_, (_, until)| now < *until);
            if shard.len() >= self.per_shard {
                let drop: Vec<KeyHash> = shard
                    .keys()
                    .take((self.per_shard / 8).max(1))
                    .copied()
                    .collect();
                for k in drop {
                    shard.remove(&k);
                }
            }
        }
        shard.insert(hash, (value, now + self.ttl));
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// API keys recently found good (with their merchant) or bad, so that neither costs a database
/// lookup again for a while; bounded.
pub struct KnownKeys {
    good: Recent<Uuid>,
    bad: Recent<()>,
}

impl Default for KnownKeys {
    fn default() -> Self {
        Self::new(KNOWN_KEYS_MAX, GOOD_FOR, BAD_FOR)
    }
}

impl KnownKeys {
    pub fn new(max: usize, good_for: Duration, bad_for: Duration) -> Self {
        Self {
            good: Recent::new(max, good_for),
            bad: Recent::new(max, bad_for),
        }
    }

    /// The merchant of a key found good within [`GOOD_FOR`].
    pub fn good(&self, hash: &KeyHash) -> Option<Uuid> {
        self.good_at(hash, Instant::now())
    }

    /// Whether the key was found bad within [`BAD_FOR`].
    pub fn bad(&self, hash: &KeyHash) -> bool {
        self.bad_at(hash, Instant::now())
    }

    pub fn remember_good(&self, hash: KeyHash, merchant: Uuid) {
        self.remember_good_at(hash, merchant, Instant::now());
    }

    pub fn remember_bad(&self, hash: KeyHash) {
        self.remember_bad_at(hash, Instant::now());
    }

    fn good_at(&self, hash: &KeyHash, now: Instant) -> Option<Uuid> {
        self.good.get(hash, now)
    }

    fn bad_at(&self, hash: &KeyHash, now: Instant) -> bool {
        self.bad.get(hash, now).is_some()
    }

    fn remember_good_at(&self, hash: KeyHash, merchant: Uuid, now: Instant) {
        self.good.insert(hash, merchant, now);
    }

    fn remember_bad_at(&self, hash: KeyHash, now: Instant) {
        self.bad.insert(hash, (), now);
    }

    /// Entries held: good keys, bad keys.
    pub fn held(&self) -> (usize, usize) {
        (self.good.len(), self.bad.len())
    }
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

/// The merchant of the request's key: known good or bad without a lookup for a while, else
/// looked up (and remembered).
async fn merchant(
    state: &AppState,
    req: &HttpRequest,
) -> Result<(MerchantAuth, KeyHash), ApiError> {
    let hash = bearer(req).map(key_hash).ok_or(ApiError::Unauthorized)?;
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
    let state = match state(req.request()) {
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
    let allowed = match (state(req.request()), bearer(req.request())) {
        (Ok(state), Some(token)) => is_admin_token(&state, token),
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

    #[test]
    fn a_key_is_named_by_the_hash_the_database_stores() {
        let key = "rk_0123456789abcdef";
        assert_eq!(
            key_hash(key).to_vec(),
            crate::domain::merchant::hash_api_key(key)
        );
    }

    #[test]
    fn known_keys_expire_and_stay_bounded() {
        let known = KnownKeys::new(64, Duration::from_secs(60), Duration::from_secs(300));
        let t0 = Instant::now();
        let merchant = Uuid::now_v7();
        let good = key_hash("good");
        let bad = key_hash("bad");
        known.remember_good_at(good, merchant, t0);
        known.remember_bad_at(bad, t0);
        assert_eq!(known.good_at(&good, t0), Some(merchant));
        assert_eq!(known.good_at(&bad, t0), None);
        assert!(known.bad_at(&bad, t0) && !known.bad_at(&good, t0));
        // A good key is taken as good for a minute only (a revoked key stops working soon).
        let later = t0 + Duration::from_secs(60);
        assert_eq!(known.good_at(&good, later), None);
        assert!(known.bad_at(&bad, later));
        assert!(!known.bad_at(&bad, t0 + Duration::from_secs(300)));
        for i in 0..10_000 {
            known.remember_bad_at(key_hash(&i.to_string()), t0);
            known.remember_good_at(key_hash(&format!("g{i}")), merchant, t0);
            let (g, b) = known.held();
            assert!(g <= 64 && b <= 64, "{g} good, {b} bad held");
        }
    }
}
