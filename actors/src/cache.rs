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
//!   but is not stored here, and Redis refuses it too (its lease moved on): an older body never
//!   replaces a newer one in either tier.
//! - [`Invalidate`] → `()`: drops keys and bumps scope generations here and in Redis, and
//!   broadcasts it; a writer awaits it before answering, so its next read on this instance sees
//!   the write, and other instances drop their copies when the broadcast arrives. What Redis
//!   does not take (a timeout, a broken connection, an open circuit) is sent again every
//!   100 ms until it does, and what this instance loaded meanwhile is dropped again then.
//!
//! What cannot be heard cannot be vouched for: when the channel is subscribed again (after a
//! break, or three heartbeats not heard back), the whole in-process tier is dropped and the
//! scopes' generations are read again from Redis.
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
use crate::shared_tier::{Lease, SharedTier};
use crate::supervision::{Resilient, Stop, Supervision};
use actix::fut::{ActorFutureExt, WrapFuture};
use actix::{Actor, ActorContext, AsyncContext, Context, Handler};
use futures_util::future::LocalBoxFuture;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

mod invalidation;
#[cfg(test)]
mod tests;
mod tier;

pub use invalidation::Invalidate;
use invalidation::{Remote, Resubscribed};

use tier::Generation;
pub use tier::{
    CacheReader, CacheSettings, CacheSnapshot, CacheStats, Entry, LoadError, Loaded, Loader, Lookup,
};

type Waiter = oneshot::Sender<Result<Option<Arc<Entry>>, LoadError>>;

pub struct Cache {
    settings: CacheSettings,
    reader: CacheReader,
    shared: Option<SharedTier>,
    /// Each key's load in flight that misses may still join: the epoch it started at, its id,
    /// its waiters.
    inflight: HashMap<Arc<str>, (u64, u64, Vec<Waiter>)>,
    /// The waiters of loads that misses may no longer join (their key changed since they
    /// started: a read after a write must not be answered from before it), by load id.
    detached: HashMap<u64, (u64, Vec<Waiter>)>,
    loads: u64,
    /// A counter of changes; the epoch of each key's (and scope's) latest invalidation.
    epoch: u64,
    invalidated: HashMap<String, u64>,
    /// The epoch of the last flush of the whole tier: loads started before it are not stored.
    flushed: u64,
    /// This instance's invalidations that Redis has not taken yet, retried until it does.
    pending: Pending,
    /// Per scope, this instance's bumps Redis has not acknowledged yet.
    unsynced: HashMap<String, u32>,
    supervision: Supervision,
}

#[derive(Default)]
struct Pending {
    keys: BTreeSet<String>,
    scopes: BTreeSet<String>,
    retrying: bool,
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
            inflight: HashMap::new(),
            detached: HashMap::new(),
            loads: 0,
            epoch: 0,
            invalidated: HashMap::new(),
            flushed: 0,
            pending: Pending::default(),
            unsynced: HashMap::new(),
            supervision,
        }
    }

    /// The reader to share with the HTTP workers, made before the actor starts.
    pub fn reader(settings: &CacheSettings) -> CacheReader {
        CacheReader::new(settings)
    }

    fn changed_since(&self, key: &str, scope: Option<&str>, since: u64) -> bool {
        let after = |k: &str| self.invalidated.get(k).is_some_and(|e| *e > since);
        since < self.flushed || after(key) || scope.is_some_and(after)
    }

    /// Invalidation epochs older than any load still in flight no longer matter.
    /// (Detached loads count: they must still find that their key changed when they finish.)
    fn forget_old_invalidations(&mut self) {
        let oldest = self
            .inflight
            .values()
            .map(|(epoch, _, _)| *epoch)
            .chain(self.detached.values().map(|(epoch, _)| *epoch))
            .min()
            .unwrap_or(self.epoch);
        self.invalidated.retain(|_, epoch| *epoch > oldest);
    }
}

impl Actor for Cache {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(shared) = self.shared.clone() {
            let (addr, again) = (ctx.address(), ctx.address());
            // Off the request path: every other instance's invalidations, as they come.
            ctx.spawn(
                shared
                    .listen(
                        move |broadcast| addr.do_send(Remote(broadcast)),
                        move || again.do_send(Resubscribed),
                    )
                    .into_actor(self),
            );
        }
    }
}

impl Resilient for Cache {
    fn supervision(&mut self) -> &mut Supervision {
        &mut self.supervision
    }

    fn rebuild(&mut self, ctx: &mut Context<Self>) {
        self.reader.tier.invalidate_all();
        self.inflight.clear();
        self.detached.clear();
        self.invalidated.clear();
        // Loads spawned before the panic still finish: none of them may be stored.
        self.epoch += 1;
        self.flushed = self.epoch;
        // What was pending is still owed (a second retry chain beside a running one is
        // harmless: an invalidation is idempotent).
        self.pending.retrying = false;
        self.retry_soon(ctx);
    }
}

impl Handler<Stop> for Cache {
    type Result = actix::AtomicResponse<Self, ()>;

    /// Stops once what Redis still owes has been sent one last time (one batch, bounded by the
    /// command timeout), answering the stop only then: a graceful stop does not leave an old
    /// body in Redis for its freshness.
    fn handle(&mut self, _: Stop, _ctx: &mut Context<Self>) -> Self::Result {
        let (keys, scopes) = self.owed_batch();
        let shared = self
            .shared
            .clone()
            .filter(|_| !keys.is_empty() || !scopes.is_empty());
        actix::AtomicResponse::new(Box::pin(
            async move {
                if let Some(shared) = shared {
                    shared.invalidate(keys, scopes).await;
                }
            }
            .into_actor(self)
            .map(|(), _, ctx: &mut Context<Self>| ctx.stop()),
        ))
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
            let joinable = cache.inflight.get(&load.key).map(|(started, id, _)| {
                (
                    *id,
                    !cache.changed_since(&load.key, load.scope.as_deref(), *started),
                )
            });
            if let Some((id, false)) = joinable {
                // Started before a write this miss must see: its callers keep it, later
                // misses load again.
                if let Some((started, _, waiters)) = cache.inflight.remove(&load.key) {
                    cache.detached.insert(id, (started, waiters));
                }
            }
            if let (Some((_, true)), Some((_, _, waiters))) =
                (joinable, cache.inflight.get_mut(&load.key))
            {
                cache.reader.stats.coalesced.fetch_add(1, Relaxed);
                waiters.push(tx);
            } else {
                cache.reader.stats.loads.fetch_add(1, Relaxed);
                cache.loads += 1;
                let id = cache.loads;
                cache
                    .inflight
                    .insert(Arc::clone(&load.key), (cache.epoch, id, vec![tx]));
                let Load { key, scope, loader } = load;
                let started = cache.epoch;
                let stale_for = cache.settings.stale_for;
                // While Redis still owes this key's invalidation it may hold the old body: it is
                // neither read nor written until the invalidation is through.
                let shared = cache
                    .shared
                    .clone()
                    .filter(|_| !cache.owes(&key, scope.as_deref()));
                let lookup_key = Arc::clone(&key);
                let fetch = async move {
                    let mut lease = Lease::default();
                    if let Some(shared) = shared {
                        let found = shared.get(&lookup_key).await;
                        if let Some((tag, body, fresh_for)) = found.entry {
                            tracing::Span::current().record("cache.tier", "redis");
                            let loaded = Loaded {
                                body,
                                tag,
                                fresh_for,
                                negative: false,
                            };
                            return (Ok(Some(loaded)), true, lease);
                        }
                        lease = found.lease;
                    }
                    tracing::Span::current().record("cache.tier", "database");
                    (loader().await, false, lease)
                };
                // In the first waiter's span (what the load logs names that request), under a
                // span of its own when the request is traced.
                let waiter = tracing::Span::current();
                let span = if crate::trace::traced() {
                    tracing::info_span!(
                        target: crate::trace::TARGET,
                        parent: &waiter,
                        "cache",
                        otel.name = "cache load",
                        cache.key = %key,
                        cache.tier = tracing::field::Empty,
                    )
                } else {
                    waiter
                };
                let fetch = tracing::Instrument::instrument(fetch, span);
                ctx.spawn(fetch.into_actor(cache).map(
                    move |(outcome, from_shared, lease), cache: &mut Cache, _| {
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
                                let shared = cache
                                    .shared
                                    .clone()
                                    .filter(|_| !cache.owes(&key, scope.as_deref()));
                                if let (Some(shared), false) = (shared, from_shared || negative) {
                                    let (key, entry) = (Arc::clone(&key), Arc::clone(entry));
                                    let fresh_for =
                                        entry.fresh_until.saturating_duration_since(Instant::now());
                                    actix_rt::spawn(async move {
                                        shared
                                            .set(&key, lease, &entry.tag, &entry.body, fresh_for)
                                            .await;
                                    });
                                }
                            }
                            Ok(_) => {}
                            Err(_) => {
                                cache.reader.stats.load_errors.fetch_add(1, Relaxed);
                            }
                        }
                        let waiters = match cache.inflight.get(&key) {
                            Some((_, current, _)) if *current == id => {
                                cache.inflight.remove(&key).map(|(_, _, w)| w)
                            }
                            _ => cache.detached.remove(&id).map(|(_, w)| w),
                        };
                        for waiter in waiters.unwrap_or_default() {
                            let _ = waiter.send(outcome.clone());
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

/// Stores `entry` under a second key, `key` (a list page under the query string a client sent,
/// beside its parsed form): the two keys carry the same scope generation, so a write to the
/// scope leaves both behind at once.
pub struct Alias {
    pub key: Arc<str>,
    pub entry: Arc<Entry>,
}

impl Request for Alias {
    type Reply = ();
}

impl Handler<Envelope<Alias>> for Cache {
    type Result = ();

    fn handle(&mut self, envelope: Envelope<Alias>, ctx: &mut Context<Self>) {
        serve(self, ctx, envelope, |cache, Alias { key, entry }, _| {
            if entry.is_fresh() {
                cache.reader.tier.insert(key, entry);
            }
            Reply::Ready(())
        });
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
