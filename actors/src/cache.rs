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

use crate::admission::{serve, serve_call, CallError, Envelope, Handle, Reply, Request};
use crate::crash::crashable;
use crate::shared_tier::{Broadcast, SharedTier};
use crate::supervision::{Resilient, Stop, Supervision};
use actix::fut::{ActorFutureExt, WrapFuture};
use actix::{Actor, ActorContext, AsyncContext, Context, Handler};
use futures_util::future::LocalBoxFuture;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

#[cfg(test)]
mod tests;
mod tier;

pub use tier::{
    CacheReader, CacheSettings, CacheSnapshot, CacheStats, Entry, LoadError, Loaded, Loader, Lookup,
};

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
        CacheReader::new(settings)
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

    /// Offers [`Shrink`] to whoever must give memory back (the memory monitor's shrinker),
    /// without that one naming the cache.
    #[allow(clippy::type_complexity)]
    pub fn shrinker(
        &self,
    ) -> Arc<dyn Fn(f64) -> LocalBoxFuture<'static, Result<u64, CallError>> + Send + Sync> {
        let cache = self.clone();
        Arc::new(move |keep| {
            let cache = cache.clone();
            Box::pin(async move { cache.call(Shrink(keep)).await })
        })
    }
}

crashable!(Cache);
