//! The invalidation side of [`Cache`]: what a write drops here, in Redis and on every other
//! instance (and the retries of what Redis did not take), the scopes' generations, and what a
//! re-opened subscription flushes.

use super::{Cache, Generation};
use crate::admission::{serve, Envelope, Reply, Request};
use crate::shared_tier::Broadcast;
use actix::fut::{ActorFutureExt, WrapFuture};
use actix::{AsyncContext, Context, Handler};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// How soon an invalidation Redis did not take is sent again.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// The most owed keys sent again in one command.
const RETRY_BATCH: usize = 256;

/// Drops `keys` and bumps the generation of `scopes` (their lists).
pub struct Invalidate {
    pub keys: Vec<String>,
    pub scopes: Vec<String>,
}

impl Request for Invalidate {
    type Reply = ();
}

impl Cache {
    /// Drops `keys` and the lists of `scopes` here; loads of them in flight are not stored.
    pub(super) fn drop_here<'a>(
        &mut self,
        keys: &[String],
        scopes: impl IntoIterator<Item = &'a String>,
    ) {
        self.epoch += 1;
        let epoch = self.epoch;
        let scopes: Vec<&String> = scopes.into_iter().collect();
        self.reader.mark_changed(scopes.iter().map(|s| s.as_str()));
        for key in keys.iter().chain(scopes.iter().copied()) {
            self.reader.tier.invalidate(key.as_str());
            self.invalidated.insert(key.clone(), epoch);
        }
        self.reader
            .stats
            .invalidations
            .fetch_add((keys.len() + scopes.len()) as u64, Relaxed);
    }

    /// A write of this instance changed `scopes`: their lists get new keys at once. Without
    /// Redis the count is this instance's own; with it, a random generation of this instance
    /// stands until Redis acknowledges the bump ([`Cache::acknowledged`]).
    pub(super) fn bump_own(&mut self, scopes: &[String]) {
        let Ok(mut generations) = self.reader.generations.write() else {
            return;
        };
        for scope in scopes {
            let generation = generations.entry(scope.clone()).or_default();
            if self.shared.is_some() {
                generation.local = rand::random::<u64>() | 1 << 63;
                *self.unsynced.entry(scope.clone()).or_default() += 1;
            } else {
                generation.shared += 1;
            }
        }
    }

    /// Takes the shared generations Redis answered (`others`: another instance's broadcast, or
    /// a fresh read; else this instance's own bump): they only move forward, and another
    /// instance's newer one also gives a scope keyed apart a new key of its own.
    pub(super) fn adopt(&mut self, generations: &[(String, u64)], others: bool) {
        if let Ok(mut held) = self.reader.generations.write() {
            for (scope, shared) in generations {
                let mine = held
                    .entry(scope.clone())
                    .or_insert_with(Generation::default);
                if others && *shared > mine.shared && mine.local != 0 {
                    // Another instance's write: this instance's lists, still keyed apart, must
                    // not outlive it either.
                    mine.local = rand::random::<u64>() | 1 << 63;
                }
                mine.shared = mine.shared.max(*shared);
            }
        }
    }

    /// Redis took this instance's bumps of these scopes: once none is outstanding, the scope's
    /// lists are keyed by the shared generation again.
    pub(super) fn acknowledged(&mut self, generations: &[(String, u64)], all: bool) {
        self.adopt(generations, false);
        let Ok(mut held) = self.reader.generations.write() else {
            return;
        };
        for (scope, _) in generations {
            let left = self.unsynced.get_mut(scope).map(|n| {
                *n = if all { 0 } else { n.saturating_sub(1) };
                *n
            });
            if left.unwrap_or(0) == 0 {
                self.unsynced.remove(scope);
                if let Some(g) = held.get_mut(scope) {
                    g.local = 0;
                }
            }
        }
    }

    /// Whether Redis still owes an invalidation of `key` or its scope.
    pub(super) fn owes(&self, key: &str, scope: Option<&str>) -> bool {
        self.pending.keys.contains(key) || scope.is_some_and(|s| self.pending.scopes.contains(s))
    }

    /// Keeps an invalidation Redis did not take, to send again soon.
    pub(super) fn owe(&mut self, keys: Vec<String>, scopes: Vec<String>, ctx: &mut Context<Self>) {
        // A retry of another write may have acknowledged these scopes meanwhile: their lists
        // are keyed apart again until this one is through.
        if let Ok(mut generations) = self.reader.generations.write() {
            for scope in &scopes {
                let generation = generations.entry(scope.clone()).or_default();
                generation.local = rand::random::<u64>() | 1 << 63;
                let unsynced = self.unsynced.entry(scope.clone()).or_default();
                *unsynced = (*unsynced).max(1);
            }
        }
        self.pending.keys.extend(keys);
        self.pending.scopes.extend(scopes);
        self.retry_soon(ctx);
    }

    pub(super) fn retry_soon(&mut self, ctx: &mut Context<Self>) {
        let owed = !self.pending.keys.is_empty() || !self.pending.scopes.is_empty();
        if self.pending.retrying || !owed {
            return;
        }
        self.pending.retrying = true;
        ctx.run_later(RETRY_EVERY, |cache, ctx| cache.retry(ctx));
    }

    /// The next batch of what Redis is owed: at most [`RETRY_BATCH`] keys, and every scope.
    pub(super) fn owed_batch(&self) -> (Vec<String>, Vec<String>) {
        let keys = self
            .pending
            .keys
            .iter()
            .take(RETRY_BATCH)
            .cloned()
            .collect();
        (keys, self.pending.scopes.iter().cloned().collect())
    }

    /// Sends what is owed again, at most [`RETRY_BATCH`] keys at a time (a backlog from a long
    /// outage must not become one command that cannot finish within the command timeout). It
    /// stays owed until Redis takes it; then what this instance loaded meanwhile (from a Redis
    /// that still held the old body) is dropped here too.
    pub(super) fn retry(&mut self, ctx: &mut Context<Self>) {
        self.pending.retrying = false;
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let (keys, scopes) = self.owed_batch();
        if keys.is_empty() && scopes.is_empty() {
            return;
        }
        self.pending.retrying = true;
        let sent = (keys.clone(), scopes.clone());
        ctx.spawn(
            async move { shared.invalidate(sent.0, sent.1).await }
                .into_actor(self)
                .map(move |outcome, cache: &mut Cache, ctx| {
                    cache.pending.retrying = false;
                    if let Some(generations) = outcome {
                        for key in &keys {
                            cache.pending.keys.remove(key);
                        }
                        for scope in &scopes {
                            cache.pending.scopes.remove(scope);
                        }
                        cache.drop_here(&keys, &scopes);
                        cache.acknowledged(&generations, true);
                    }
                    cache.retry_soon(ctx);
                }),
        );
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
                cache.drop_here(&keys, &scopes);
                cache.bump_own(&scopes);
                let Some(shared) = cache.shared.clone() else {
                    return Reply::Ready(());
                };
                // The shared copies go before the writer is answered: its next read here must not
                // find the old value in Redis. Bounded by the command timeout and the breaker;
                // what Redis does not take is sent again until it does.
                let sent = (keys.clone(), scopes.clone());
                Reply::Spawn(Box::pin(
                    async move { shared.invalidate(sent.0, sent.1).await }
                        .into_actor(cache)
                        .map(move |outcome, cache: &mut Cache, ctx| match outcome {
                            Some(generations) => cache.acknowledged(&generations, false),
                            None => cache.owe(keys, scopes, ctx),
                        }),
                ))
            },
        );
    }
}

/// Another instance's invalidation, from the shared tier's channel.
pub(super) struct Remote(pub(super) Broadcast);

impl actix::Message for Remote {
    type Result = ();
}

impl Handler<Remote> for Cache {
    type Result = ();

    fn handle(&mut self, Remote(broadcast): Remote, _ctx: &mut Context<Self>) {
        self.drop_here(&broadcast.keys, broadcast.scopes.iter().map(|(s, _)| s));
        self.adopt(&broadcast.scopes, true);
    }
}

/// The channel was subscribed again after a break or a silence: whatever was broadcast
/// meanwhile is lost, so nothing held here can be vouched for. The whole tier goes (loads in
/// flight are not stored), and the scopes' generations are read again from Redis.
pub(super) struct Resubscribed;

impl actix::Message for Resubscribed {
    type Result = ();
}

impl Handler<Resubscribed> for Cache {
    type Result = ();

    fn handle(&mut self, _: Resubscribed, ctx: &mut Context<Self>) {
        self.reader.tier.invalidate_all();
        self.epoch += 1;
        self.flushed = self.epoch;
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let scopes: Vec<String> = self
            .reader
            .generations
            .read()
            .map(|g| g.keys().cloned().collect())
            .unwrap_or_default();
        ctx.spawn(
            async move { shared.generations(scopes).await }
                .into_actor(self)
                .map(|generations, cache: &mut Cache, _| {
                    if let Some(generations) = generations {
                        cache.adopt(&generations, true);
                    }
                }),
        );
    }
}
