//! API keys recently found good (with their merchant) or bad, so that neither costs a database
//! lookup again for a while: two bounded tables of key hashes, each entry until its expiry.
//!
//! Keys cannot be revoked or rotated in this code base today; should that come, a revoked key
//! would keep working for at most [`GOOD_FOR`] (the reason it is short).

use crate::domain::merchant::KeyHash;
use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};
use uuid::Uuid;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::merchant::key_hash;

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
