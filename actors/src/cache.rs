//! `Cache`: owns the in-process tier of serialized responses (bytes with their entity tag).
//!
//! What it owns: optionally the Redis tier ([`SharedTier`]: entries shared by every instance,
//! and the channel through which invalidations reach every instance within a second); a bounded
//! moka tier (at most `max_entries` entries and `max_bytes` bytes; each
//! entry lives until its own `fresh_for`, then `stale_for` more for stale-if-error), the loads in
//! flight, the per-scope generations, and its stats. Keys are opaque strings the caller builds
//! (and must scope: a tenant's keys carry the tenant). Lists of a scope are keyed with the
//! scope's generation, so one [`Invalidate`] of the scope drops all of them without a key scan.
//!
//! Messages (through [`crate::Handle`]):
//! - [`Load`] → `Result<Option<Arc<Entry>>, LoadError>`: a miss. Concurrent loads of one key run
//!   once (the Redis tier, then the loader) and share the outcome, error included (the next miss
//!   loads again). A load that overlapped an invalidation of its key or scope answers its callers
//!   but is not stored.
//! - [`Invalidate`] → `()`: drops keys and bumps scope generations here and in Redis, and
//!   broadcasts it; a writer awaits it before answering, so its next read on this instance sees
//!   the write, and other instances drop their copies when the broadcast arrives.
//! - [`Shrink`] → `u64` (entries dropped): the memory monitor's request to keep a fraction.
//! - [`crate::Stop`].
//!
//! The hot path bypasses the mailbox, by measurement: a hit read from the tier by the caller's
//! thread through [`CacheReader`] costs 0.21 µs; the same hit asked of the actor across threads
//! costs 21 µs (`cargo bench -p rampart-actors --bench admission`, medians on this machine), a
//! hundred times more, and one instance per HTTP worker would split the tier, its single-flight
//! and its invalidations by worker. So the actor owns the tier and is its only writer (fills,
//! invalidations, shrinking go through the mailbox, so the actor alone decides what is stored),
//! and hits read it without a message: moka reads are lock-free. With hits served so, `product`
//! ran at 34.6k req/s against 15.5k before the cache (BENCHMARKS.md).
//! Mailbox: from its `ActorSpec`; a full mailbox refuses a miss at once (the caller may go to the
//! database directly or answer 503). A panic in a handler (none is expected) empties the tier:
//! what it held may have been half-updated. Stats: hits, stale hits, misses, loads, coalesced
//! waiters, load errors, invalidations, evictions, entries and bytes.

use crate::admission::{serve, serve_call, Envelope, Handle, Reply, Request};
use crate::shared_tier::{Broadcast, SharedTier};
use crate::supervision::{Resilient, Stop, Supervision};
use actix::fut::{ActorFutureExt, WrapFuture};
use actix::{Actor, ActorContext, AsyncContext, Context, Handler};
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
use tokio::sync::oneshot;

/// A stored response: its bytes, its entity tag, and how long it is fresh, then stale.
#[derive(Debug)]
pub struct Entry {
    pub body: Bytes,
    pub tag: Arc<str>,
    fresh_until: Instant,
    stale_until: Instant,
    /// A remembered absence ([`Loaded::negative`]).
    negative: bool,
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
    loads: AtomicU64,
    coalesced: AtomicU64,
    load_errors: AtomicU64,
    invalidations: AtomicU64,
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
    tier: Tier<Arc<str>, Arc<Entry>>,
    generations: Arc<RwLock<HashMap<String, u64>>>,
    /// When each scope last changed here (a local write or another instance's broadcast): the
    /// read replicas serve a scope only once they have replayed past it.
    changed: Arc<RwLock<HashMap<String, Instant>>>,
    stats: Arc<CacheStats>,
}

impl CacheReader {
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
            .map(|g| g.get(scope).copied().unwrap_or(0))
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

type Waiter = oneshot::Sender<Result<Option<Arc<Entry>>, LoadError>>;

pub struct Cache {
    settings: CacheSettings,
    reader: CacheReader,
    shared: Option<SharedTier>,
    /// Keys this instance stored in the shared tier lately: if another instance's invalidation
    /// arrives for one of them, the shared copy may predate it and is dropped again.
    recently_shared: HashMap<Arc<str>, Instant>,
    /// Waiters of each load in flight, and the epoch it started at.
    inflight: HashMap<Arc<str>, (u64, Vec<Waiter>)>,
    /// A counter of changes; the epoch of each key's (and scope's) latest invalidation.
    epoch: u64,
    invalidated: HashMap<String, u64>,
    supervision: Supervision,
}

impl Cache {
    pub fn new(
        settings: CacheSettings,
        reader: CacheReader,
        shared: Option<SharedTier>,
        supervision: Supervision,
    ) -> Self {
        Self {
            settings,
            reader,
            shared,
            recently_shared: HashMap::new(),
            inflight: HashMap::new(),
            epoch: 0,
            invalidated: HashMap::new(),
            supervision,
        }
    }

    /// The reader to share with the HTTP workers, made before the actor starts.
    pub fn reader(settings: &CacheSettings) -> CacheReader {
        let stats = Arc::new(CacheStats::default());
        CacheReader {
            tier: build_tier(settings, &stats),
            generations: Arc::new(RwLock::new(HashMap::new())),
            changed: Arc::new(RwLock::new(HashMap::new())),
            stats,
        }
    }

    fn changed_since(&self, key: &str, scope: Option<&str>, since: u64) -> bool {
        let after = |k: &str| self.invalidated.get(k).is_some_and(|e| *e > since);
        after(key) || scope.is_some_and(after)
    }

    /// Invalidation epochs older than any load still in flight no longer matter.
    fn forget_old_invalidations(&mut self) {
        let oldest = self
            .inflight
            .values()
            .map(|(epoch, _)| *epoch)
            .min()
            .unwrap_or(self.epoch);
        self.invalidated.retain(|_, epoch| *epoch > oldest);
    }
}

impl Actor for Cache {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(shared) = self.shared.clone() {
            let addr = ctx.address();
            // Off the request path: every other instance's invalidations, as they come.
            let reader = self.reader.clone();
            ctx.spawn(
                shared
                    .listen(
                        move |broadcast| addr.do_send(Remote(broadcast)),
                        // Broadcasts sent while the channel was down are lost: the absences
                        // they would have voided go now (values expire with their freshness).
                        move || {
                            reader.drop_absent();
                        },
                    )
                    .into_actor(self),
            );
        }
        ctx.run_interval(Duration::from_secs(5), |cache, _| {
            let horizon = Instant::now() - Duration::from_secs(5);
            cache.recently_shared.retain(|_, at| *at > horizon);
        });
    }
}

impl Resilient for Cache {
    fn supervision(&mut self) -> &mut Supervision {
        &mut self.supervision
    }

    fn rebuild(&mut self, _ctx: &mut Context<Self>) {
        self.reader.tier.invalidate_all();
        self.inflight.clear();
        self.invalidated.clear();
    }
}

impl Handler<Stop> for Cache {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// A miss of `key`: load it once for every concurrent caller and store what comes back.
/// `scope` names the key's scope, whose invalidation also voids the load.
pub struct Load {
    pub key: Arc<str>,
    pub scope: Option<String>,
    pub loader: Loader,
}

impl Request for Load {
    type Reply = Result<Option<Arc<Entry>>, LoadError>;
}

impl Handler<Envelope<Load>> for Cache {
    type Result = ();

    fn handle(&mut self, envelope: Envelope<Load>, ctx: &mut Context<Self>) {
        serve_call(self, ctx, envelope, |cache, load, _caller, ctx| {
            // A load that finished while this miss was queued may have filled the key.
            if let Some(entry) = cache.reader.tier.get(&load.key).filter(|e| e.is_fresh()) {
                return Reply::Ready(Ok(Some(entry)));
            }
            let (tx, rx) = oneshot::channel();
            if let Some((_, waiters)) = cache.inflight.get_mut(&load.key) {
                cache.reader.stats.coalesced.fetch_add(1, Relaxed);
                waiters.push(tx);
            } else {
                cache.reader.stats.loads.fetch_add(1, Relaxed);
                cache
                    .inflight
                    .insert(Arc::clone(&load.key), (cache.epoch, vec![tx]));
                let Load { key, scope, loader } = load;
                let started = cache.epoch;
                let stale_for = cache.settings.stale_for;
                let shared = cache.shared.clone();
                let lookup_key = Arc::clone(&key);
                let fetch = async move {
                    if let Some(shared) = shared {
                        if let Some((tag, body, fresh_for)) = shared.get(&lookup_key).await {
                            return (
                                Ok(Some(Loaded {
                                    body,
                                    tag,
                                    fresh_for,
                                    negative: false,
                                })),
                                true,
                            );
                        }
                    }
                    (loader().await, false)
                };
                // In the first waiter's span: what the load logs names that request.
                let fetch = tracing::Instrument::instrument(fetch, tracing::Span::current());
                ctx.spawn(fetch.into_actor(cache).map(
                    move |(outcome, from_shared), cache: &mut Cache, _| {
                        let negative = matches!(&outcome, Ok(Some(l)) if l.negative);
                        let outcome = outcome.map(|loaded| {
                            loaded.map(|l| {
                                let now = Instant::now();
                                let stale_for = if l.negative {
                                    Duration::ZERO
                                } else {
                                    stale_for
                                };
                                Arc::new(Entry {
                                    body: l.body,
                                    tag: l.tag,
                                    fresh_until: now + l.fresh_for,
                                    stale_until: now + l.fresh_for + stale_for,
                                    negative: l.negative,
                                })
                            })
                        });
                        match &outcome {
                            Ok(Some(entry))
                                if !cache.changed_since(&key, scope.as_deref(), started) =>
                            {
                                cache
                                    .reader
                                    .tier
                                    .insert(Arc::clone(&key), Arc::clone(entry));
                                if let (Some(shared), false) =
                                    (cache.shared.clone(), from_shared || negative)
                                {
                                    cache
                                        .recently_shared
                                        .insert(Arc::clone(&key), Instant::now());
                                    let (key, entry) = (Arc::clone(&key), Arc::clone(entry));
                                    let fresh_for =
                                        entry.fresh_until.saturating_duration_since(Instant::now());
                                    actix_rt::spawn(async move {
                                        shared.set(&key, &entry.tag, &entry.body, fresh_for).await;
                                    });
                                }
                            }
                            Ok(_) => {}
                            Err(_) => {
                                cache.reader.stats.load_errors.fetch_add(1, Relaxed);
                            }
                        }
                        if let Some((_, waiters)) = cache.inflight.remove(&key) {
                            for waiter in waiters {
                                let _ = waiter.send(outcome.clone());
                            }
                        }
                        cache.forget_old_invalidations();
                    },
                ));
            }
            Reply::Spawn(Box::pin(
                async move {
                    rx.await.unwrap_or_else(|_| {
                        Err(Arc::new(std::io::Error::other("cache load abandoned")) as LoadError)
                    })
                }
                .into_actor(cache),
            ))
        });
    }
}

/// Drops `keys` and bumps the generation of `scopes` (their lists).
pub struct Invalidate {
    pub keys: Vec<String>,
    pub scopes: Vec<String>,
}

impl Request for Invalidate {
    type Reply = ();
}

impl Cache {
    /// Drops `keys` here and bumps the generation of `scopes` (at least to `at_least`).
    fn invalidate_here(&mut self, keys: &[String], scopes: &[(String, u64)]) {
        self.epoch += 1;
        let epoch = self.epoch;
        if let Ok(mut generations) = self.reader.generations.write() {
            for (scope, at_least) in scopes {
                let generation = generations.entry(scope.clone()).or_insert(0);
                *generation = (*generation + 1).max(*at_least);
            }
        }
        self.reader
            .mark_changed(scopes.iter().map(|(s, _)| s.as_str()));
        for key in keys.iter().chain(scopes.iter().map(|(s, _)| s)) {
            self.reader.tier.invalidate(key.as_str());
            self.invalidated.insert(key.clone(), epoch);
        }
        self.reader
            .stats
            .invalidations
            .fetch_add((keys.len() + scopes.len()) as u64, Relaxed);
    }
}

impl Handler<Envelope<Invalidate>> for Cache {
    type Result = ();

    fn handle(&mut self, envelope: Envelope<Invalidate>, ctx: &mut Context<Self>) {
        serve(
            self,
            ctx,
            envelope,
            |cache, Invalidate { keys, scopes }, _| {
                let local: Vec<(String, u64)> = scopes.iter().map(|s| (s.clone(), 0)).collect();
                cache.invalidate_here(&keys, &local);
                let Some(shared) = cache.shared.clone() else {
                    return Reply::Ready(());
                };
                // The shared copies go before the writer is answered: its next read here must not
                // find the old value in Redis. Bounded by the command timeout and the breaker.
                Reply::Spawn(Box::pin(
                    async move { shared.invalidate(keys, scopes).await }
                        .into_actor(cache)
                        .map(|generations, cache: &mut Cache, _| {
                            if let Ok(mut held) = cache.reader.generations.write() {
                                for (scope, generation) in generations {
                                    let mine = held.entry(scope).or_insert(0);
                                    *mine = (*mine).max(generation);
                                }
                            }
                        }),
                ))
            },
        );
    }
}

/// Another instance's invalidation, from the shared tier's channel.
struct Remote(Broadcast);

impl actix::Message for Remote {
    type Result = ();
}

impl Handler<Remote> for Cache {
    type Result = ();

    fn handle(&mut self, Remote(broadcast): Remote, _ctx: &mut Context<Self>) {
        self.invalidate_here(&broadcast.keys, &broadcast.scopes);
        // A copy this instance shared just before the write may have reached Redis after the
        // writer's DEL: drop it again.
        let again: Vec<String> = broadcast
            .keys
            .into_iter()
            .filter(|k| self.recently_shared.contains_key(k.as_str()))
            .collect();
        if let (Some(shared), false) = (self.shared.clone(), again.is_empty()) {
            actix_rt::spawn(async move { shared.delete(again).await });
        }
    }
}

/// Keep about `keep` (0.0 to 1.0) of the tier's bytes; answers how many entries went.
pub struct Shrink(pub f64);

impl Request for Shrink {
    type Reply = u64;
}

impl Handler<Envelope<Shrink>> for Cache {
    type Result = ();

    fn handle(&mut self, envelope: Envelope<Shrink>, ctx: &mut Context<Self>) {
        serve(self, ctx, envelope, |cache, Shrink(keep), _| {
            let tier = &cache.reader.tier;
            tier.run_pending_tasks();
            let target = (tier.weighted_size() as f64 * keep.clamp(0.0, 1.0)) as u64;
            let mut dropped = 0;
            let keys: Vec<Arc<str>> = tier.iter().map(|(k, _)| Arc::clone(&*k)).collect();
            for key in keys {
                if tier.weighted_size() <= target {
                    break;
                }
                tier.invalidate(&key);
                tier.run_pending_tasks();
                dropped += 1;
            }
            Reply::Ready(dropped)
        });
    }
}

impl Handle<Cache> {
    pub async fn load(
        &self,
        key: Arc<str>,
        scope: Option<String>,
        loader: Loader,
    ) -> Result<Option<Arc<Entry>>, LoadError> {
        match self.call(Load { key, scope, loader }).await {
            Ok(outcome) => outcome,
            Err(e) => Err(Arc::new(e) as LoadError),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(negative: bool) -> Arc<Entry> {
        let now = Instant::now();
        Arc::new(Entry {
            body: Bytes::from_static(b"{}"),
            tag: Arc::from(""),
            fresh_until: now + Duration::from_secs(60),
            stale_until: now + Duration::from_secs(60),
            negative,
        })
    }

    #[test]
    fn dropping_the_absences_keeps_every_value() {
        let reader = Cache::reader(&CacheSettings {
            max_entries: 100,
            max_bytes: 1 << 20,
            stale_for: Duration::from_secs(60),
        });
        reader.tier.insert(Arc::from("product:a"), entry(true));
        reader.tier.insert(Arc::from("product:b"), entry(false));
        // A list page carries an empty tag too: only the flag tells an absence.
        reader.tier.insert(Arc::from("list:a"), entry(false));
        assert_eq!(reader.drop_absent(), 1);
        assert!(matches!(reader.lookup("product:a"), Lookup::Missing));
        assert!(matches!(reader.lookup("product:b"), Lookup::Fresh(e) if !e.is_negative()));
        assert!(matches!(reader.lookup("list:a"), Lookup::Fresh(_)));
    }
}
