//! The cache's in-process tier: the stored responses ([`Entry`]), their bounded moka store, the
//! scopes' generations, and [`CacheReader`], the read side every HTTP worker shares so that a hit
//! costs no message. The `Cache` actor is the tier's only writer.

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::sync::Cache as Tier;
use moka::Expiry;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// A stored response: its bytes, its entity tag, and how long it is fresh, then stale.
#[derive(Debug)]
pub struct Entry {
    pub body: Bytes,
    pub tag: Arc<str>,
    pub(super) fresh_until: Instant,
    pub(super) stale_until: Instant,
    /// A remembered absence ([`Loaded::negative`]).
    pub(super) negative: bool,
}

impl Entry {
    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.fresh_until
    }

    /// Whether the entry remembers an absence ([`Loaded::negative`]), not a value.
    pub fn is_negative(&self) -> bool {
        self.negative
    }
}

/// What a loader produces: the body and tag to store, and how long it is fresh.
pub struct Loaded {
    pub body: Bytes,
    pub tag: Arc<str>,
    pub fresh_for: Duration,
    /// A remembered absence ("nothing there", in the caller's own encoding): kept in this
    /// instance's tier only, never written to Redis (one write per unknown key would cost more
    /// than the read it saves), and gone once no longer fresh (no stale window: serving it
    /// when a load fails would hide a thing created meanwhile).
    pub negative: bool,
}

/// A load's failure, shared by every caller that waited for it.
pub type LoadError = Arc<dyn std::error::Error + Send + Sync>;

/// Runs the load (a database read, say): `Ok(None)` is "nothing there", not stored.
pub type Loader = Box<
    dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<Option<Loaded>, LoadError>> + Send>> + Send,
>;

#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    pub max_entries: u64,
    pub max_bytes: u64,
    /// How long past freshness an entry may still answer when its load fails.
    pub stale_for: Duration,
}

struct ByEntry;

impl Expiry<Arc<str>, Arc<Entry>> for ByEntry {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Arc<Entry>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.stale_until.saturating_duration_since(created_at))
    }
}

#[derive(Debug, Default)]
pub struct CacheStats {
    hits: AtomicU64,
    stale_hits: AtomicU64,
    misses: AtomicU64,
    pub(super) loads: AtomicU64,
    pub(super) coalesced: AtomicU64,
    pub(super) load_errors: AtomicU64,
    pub(super) invalidations: AtomicU64,
    evictions: AtomicU64,
}

/// A point-in-time copy of the cache's counters and size.
#[derive(Debug, Clone, Serialize)]
pub struct CacheSnapshot {
    pub hits: u64,
    pub stale_hits: u64,
    pub misses: u64,
    pub loads: u64,
    pub coalesced: u64,
    pub load_errors: u64,
    pub invalidations: u64,
    pub evictions: u64,
    pub entries: u64,
    pub bytes: u64,
}

/// A scope's generation: the shared counter (Redis's `gen:<scope>`, or this instance's own
/// count without Redis) and, while a bump of this instance's is not yet acknowledged by Redis,
/// a random one of its own, top bit set so that it is never a counter's value: two instances
/// can never key different lists alike, however their bumps interleave.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Generation {
    pub shared: u64,
    pub local: u64,
}

impl Generation {
    pub fn current(&self) -> u64 {
        if self.local != 0 {
            self.local
        } else {
            self.shared
        }
    }
}

/// What a lookup found.
pub enum Lookup {
    Fresh(Arc<Entry>),
    /// Past freshness but inside the stale window: answer it only if a load fails.
    Stale(Arc<Entry>),
    Missing,
}

/// The read side of the tier, shared with every HTTP worker: lookups without a message.
#[derive(Clone)]
pub struct CacheReader {
    pub(super) tier: Tier<Arc<str>, Arc<Entry>>,
    pub(super) generations: Arc<RwLock<HashMap<String, Generation>>>,
    /// When each scope last changed here (a local write or another instance's broadcast): the
    /// read replicas serve a scope only once they have replayed past it.
    changed: Arc<RwLock<HashMap<String, Instant>>>,
    pub(super) stats: Arc<CacheStats>,
}

impl CacheReader {
    /// An empty tier bounded by `settings`.
    pub(super) fn new(settings: &CacheSettings) -> Self {
        let stats = Arc::new(CacheStats::default());
        Self {
            tier: build_tier(settings, &stats),
            generations: Arc::new(RwLock::new(HashMap::new())),
            changed: Arc::new(RwLock::new(HashMap::new())),
            stats,
        }
    }

    pub fn lookup(&self, key: &str) -> Lookup {
        match self.tier.get(key) {
            Some(entry) if entry.is_fresh() => {
                self.stats.hits.fetch_add(1, Relaxed);
                Lookup::Fresh(entry)
            }
            Some(entry) => {
                self.stats.misses.fetch_add(1, Relaxed);
                Lookup::Stale(entry)
            }
            None => {
                self.stats.misses.fetch_add(1, Relaxed);
                Lookup::Missing
            }
        }
    }

    /// The scope's generation, to put in the keys of its lists.
    pub fn generation(&self, scope: &str) -> u64 {
        self.generations
            .read()
            .map(|g| g.get(scope).map_or(0, Generation::current))
            .unwrap_or(0)
    }

    /// When the scope was last invalidated on this instance (`None`: not since it started).
    pub fn changed_at(&self, scope: &str) -> Option<Instant> {
        self.changed.read().ok().and_then(|c| c.get(scope).copied())
    }

    /// Records that these scopes changed now.
    pub fn mark_changed<'a>(&self, scopes: impl IntoIterator<Item = &'a str>) {
        if let Ok(mut changed) = self.changed.write() {
            let now = Instant::now();
            for scope in scopes {
                changed.insert(scope.to_owned(), now);
            }
        }
    }

    /// Drops `key` at once, off the mailbox: only for when an [`Invalidate`] could not be
    /// delivered, so that no reader is served what a write changed.
    pub fn evict(&self, key: &str) {
        self.tier.invalidate(key);
    }

    /// Drops every remembered absence (negative entry) at once; answers how many went. An
    /// absence lives only here, so an invalidation broadcast lost while the channel was down
    /// would otherwise leave a created product unseen until the absence expired.
    pub fn drop_absent(&self) -> u64 {
        let mut dropped = 0;
        for (key, entry) in self.tier.iter() {
            if entry.negative {
                self.tier.invalidate(&*key);
                dropped += 1;
            }
        }
        dropped
    }

    /// Counts an answer given from a stale entry after a failed load.
    pub fn served_stale(&self) {
        self.stats.stale_hits.fetch_add(1, Relaxed);
    }

    /// The figures now. Moka counts entries lazily: its pending maintenance runs first (a
    /// scrape's cost, never a request's).
    pub fn snapshot(&self) -> CacheSnapshot {
        self.tier.run_pending_tasks();
        let s = &self.stats;
        CacheSnapshot {
            hits: s.hits.load(Relaxed),
            stale_hits: s.stale_hits.load(Relaxed),
            misses: s.misses.load(Relaxed),
            loads: s.loads.load(Relaxed),
            coalesced: s.coalesced.load(Relaxed),
            load_errors: s.load_errors.load(Relaxed),
            invalidations: s.invalidations.load(Relaxed),
            evictions: s.evictions.load(Relaxed),
            entries: self.tier.entry_count(),
            bytes: self.tier.weighted_size(),
        }
    }
}

fn build_tier(settings: &CacheSettings, stats: &Arc<CacheStats>) -> Tier<Arc<str>, Arc<Entry>> {
    // Every entry weighs at least max_bytes / max_entries, so the byte bound also bounds the count.
    let floor = (settings.max_bytes / settings.max_entries.max(1)).max(1);
    let stats = Arc::clone(stats);
    Tier::builder()
        .max_capacity(settings.max_bytes.max(1))
        .weigher(move |key: &Arc<str>, entry: &Arc<Entry>| {
            let size = (key.len() + entry.body.len() + entry.tag.len() + 64) as u64;
            u32::try_from(size.max(floor)).unwrap_or(u32::MAX)
        })
        .expire_after(ByEntry)
        .eviction_listener(move |_, _, cause| {
            if cause == RemovalCause::Size {
                stats.evictions.fetch_add(1, Relaxed);
            }
        })
        .build()
}
