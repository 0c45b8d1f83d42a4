//! `KeyTable`: the limiter's per-key state, bounded, read without a write on the hot path.
//!
//! The limiter's first table was moka's cache with time-to-idle and LRU eviction. A profile of
//! the storefront under load put its read at half the guardians' cost: each read records an
//! access for the eviction policy and runs its housekeeping. The limiter needs neither: its
//! state says by itself when a key is idle (a GCRA key whose theoretical arrival time has passed
//! allows a full burst again, exactly as a key never seen; a lease past its validity is empty),
//! so the sweep drops exactly those keys and changes no decision. So a read is a shard's read
//! lock and a hash lookup; the value is atomics, updated under the read lock.
//!
//! Bounded: a shard full of keys still in use drops its idle ones first, then an eighth of the
//! rest (a key dropped early gets a fresh burst: the price of the bound, as with any LRU).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

const SHARDS: usize = 32;

type Shard<V> = RwLock<HashMap<Box<str>, V>>;

pub(crate) struct KeyTable<V> {
    shards: Box<[Shard<V>]>,
    pick: RandomState,
    per_shard: usize,
}

impl<V> KeyTable<V> {
    /// Holds at most `max_keys` keys (at least one per shard).
    pub(crate) fn new(max_keys: u64) -> Self {
        let per_shard = usize::try_from(max_keys.div_ceil(SHARDS as u64))
            .unwrap_or(usize::MAX)
            .max(1);
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            pick: RandomState::new(),
            per_shard,
        }
    }

    fn shard(&self, key: &str) -> &Shard<V> {
        &self.shards[self.pick.hash_one(key) as usize % SHARDS]
    }

    // The values are atomics, consistent whatever a panicking holder left: poisoning is moot.
    fn read(shard: &Shard<V>) -> RwLockReadGuard<'_, HashMap<Box<str>, V>> {
        shard.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(shard: &Shard<V>) -> RwLockWriteGuard<'_, HashMap<Box<str>, V>> {
        shard.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// `f` on the value of `key`, if held.
    pub(crate) fn get<R>(&self, key: &str, f: impl FnOnce(&V) -> R) -> Option<R> {
        Self::read(self.shard(key)).get(key).map(f)
    }

    /// `f` on the value of `key`, made by `new` when not held; making room when the shard is
    /// full drops first the keys `idle` says are idle.
    pub(crate) fn with<R>(
        &self,
        key: &str,
        new: impl FnOnce() -> V,
        idle: impl Fn(&V) -> bool,
        f: impl FnOnce(&V) -> R,
    ) -> R {
        let shard = self.shard(key);
        if let Some(v) = Self::read(shard).get(key) {
            return f(v);
        }
        let mut map = Self::write(shard);
        if !map.contains_key(key) && map.len() >= self.per_shard {
            map.retain(|_, v| !idle(v));
            if map.len() >= self.per_shard {
                let drop: Vec<Box<str>> = map
                    .keys()
                    .take((self.per_shard / 8).max(1))
                    .cloned()
                    .collect();
                for k in drop {
                    map.remove(&k);
                }
            }
        }
        f(map.entry(key.into()).or_insert_with(new))
    }

    /// Drops the keys `idle` says are idle.
    pub(crate) fn sweep(&self, idle: impl Fn(&V) -> bool) {
        for shard in self.shards.iter() {
            Self::write(shard).retain(|_, v| !idle(v));
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.shards.iter().map(|s| Self::read(s).len() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    #[test]
    fn holds_at_most_its_bound_and_keeps_the_keys_in_use_over_idle_ones() {
        let t: KeyTable<AtomicU64> = KeyTable::new(64);
        // Key "busy" stays in use (value 1); every other key is idle (value 0) once touched.
        t.with(
            "busy",
            || AtomicU64::new(1),
            |v| v.load(Relaxed) == 0,
            |_| (),
        );
        for i in 0..10_000 {
            t.with(
                &i.to_string(),
                || AtomicU64::new(0),
                |v| v.load(Relaxed) == 0,
                |_| (),
            );
            assert!(t.len() <= 64, "{} keys held", t.len());
        }
        assert_eq!(t.get("busy", |v| v.load(Relaxed)), Some(1));
        t.sweep(|v| v.load(Relaxed) == 0);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_full_shard_of_keys_in_use_still_takes_new_ones() {
        let t: KeyTable<AtomicU64> = KeyTable::new(32);
        for i in 0..1_000 {
            let seen = t.with(
                &i.to_string(),
                || AtomicU64::new(7),
                |_| false,
                |v| v.load(Relaxed),
            );
            assert_eq!(seen, 7);
        }
        assert!(t.len() <= 32, "{} keys held", t.len());
    }
}
