//! The Redis tier of [`crate::Cache`]: entries shared by every instance, and the channel that
//! tells every instance of an invalidation.
//!
//! Commands go through the [`RedisLink`]: a timeout on each, so a hung Redis cannot stall a
//! request, and Redis's circuit, which skips it after failures or timeouts for its wait, then
//! probes it: requests are served from memory and PostgreSQL meanwhile, and the tier comes back
//! by itself.
//!
//! An entry is a hash: `b`, the entity tag, a newline, then the body, and `t`, the key's lease
//! counter (the leases of "Scaling Memcache at Facebook", NSDI 2013). A load reads `t` with its
//! lookup; an invalidation increments `t` and drops `b` (the key stays, as a tombstone, for
//! [`TOMBSTONE`]); a load stores its body only if `t` is still what it read. So a load that read
//! the database before a commit and finishes after the commit's invalidation can never put the
//! older body back, however late it comes. Invalidations also `INCR gen:<scope>` for each scope
//! and `PUBLISH` one message: `i <instance>`, then `k <key>` and `s <scope> <generation>` lines.
//! The listener also publishes a heartbeat (`h <instance>`) every [`SharedTierSettings::keepalive`]
//! and expects to hear it back: a subscription that went deaf without breaking is opened again,
//! and an instance that (re)subscribes flushes what it could not hear meanwhile.

use crate::redis_link::RedisLink;
use bytes::Bytes;
use serde::Serialize;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SharedTierSettings {
    pub channel: String,
    /// How long the listener waits before subscribing again after a break.
    pub resubscribe_after: Duration,
    /// How often the listener sends itself a heartbeat through the channel; three missed in a
    /// row and the subscription is opened again.
    pub keepalive: Duration,
}

/// Where `key` lives in Redis: entries are hashes, under a prefix of their own so that the
/// plain strings an older release stored are never read as entries (nor the other way round).
fn stored(key: &str) -> String {
    format!("e:{key}")
}

/// How long an invalidated key keeps its lease counter: longer than any load can take (a
/// load is bounded by its request's deadline), so a late load always finds it changed.
pub const TOMBSTONE: Duration = Duration::from_secs(120);

/// Stores a load's body only if the key's lease counter is still the one the load read
/// (`ARGV[1]`, empty for none).
const SET_IF_LEASED: &str = r"
local t = redis.call('HGET', KEYS[1], 't')
if (t or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'b', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// What a lookup of the shared tier found: the entry if any, and the key's lease (its
/// counter as read), to hand back when storing the load that follows.
#[derive(Debug, Default)]
pub struct Found {
    pub entry: Option<(Arc<str>, Bytes, Duration)>,
    pub lease: Lease,
}

/// A key's lease counter as a lookup read it (`None`: the lookup failed, so nothing may be
/// stored).
#[derive(Debug, Clone, Default)]
pub struct Lease(Option<String>);

#[derive(Debug, Default)]
struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    refused: AtomicU64,
    resubscribed: AtomicU64,
}

/// The Redis tier's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SharedTierSnapshot {
    /// The last command succeeded and the circuit is closed.
    pub up: bool,
    pub breaker_open: bool,
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    pub timeouts: u64,
    /// Commands not sent because the circuit was open.
    pub skipped: u64,
    pub invalidations_sent: u64,
    pub invalidations_received: u64,
    /// Loads not stored because the key was invalidated since they looked it up.
    pub stale_loads_refused: u64,
    /// Times the channel was subscribed again after a break or a missed heartbeat.
    pub resubscribed: u64,
}

/// An invalidation as the channel carries it.
#[derive(Debug, Default, PartialEq)]
pub struct Broadcast {
    pub from: String,
    pub keys: Vec<String>,
    pub scopes: Vec<(String, u64)>,
    /// A listener's heartbeat to itself, nothing to drop.
    pub heartbeat: bool,
}

impl Broadcast {
    fn encode(&self) -> String {
        let mut text = format!("{} {}\n", if self.heartbeat { "h" } else { "i" }, self.from);
        for key in &self.keys {
            text.push_str(&format!("k {key}\n"));
        }
        for (scope, generation) in &self.scopes {
            text.push_str(&format!("s {scope} {generation}\n"));
        }
        text
    }

    pub fn decode(text: &str) -> Self {
        let mut message = Broadcast::default();
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("i", from)) => message.from = from.to_owned(),
                Some(("h", from)) => {
                    message.from = from.to_owned();
                    message.heartbeat = true;
                }
                Some(("k", key)) => message.keys.push(key.to_owned()),
                Some(("s", rest)) => {
                    if let Some((scope, generation)) = rest.rsplit_once(' ') {
                        let generation = generation.parse().unwrap_or(0);
                        message.scopes.push((scope.to_owned(), generation));
                    }
                }
                _ => {}
            }
        }
        message
    }
}

#[derive(Clone)]
pub struct SharedTier {
    link: RedisLink,
    counts: Arc<Counts>,
    settings: SharedTierSettings,
    instance: Arc<str>,
}

impl SharedTier {
    pub fn new(link: RedisLink, settings: SharedTierSettings, instance: &str) -> Self {
        Self {
            link,
            counts: Arc::new(Counts::default()),
            settings,
            instance: Arc::from(instance),
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn link(&self) -> &RedisLink {
        &self.link
    }

    pub fn snapshot(&self) -> SharedTierSnapshot {
        let link = self.link.snapshot();
        let c = &self.counts;
        SharedTierSnapshot {
            up: link.up,
            breaker_open: link.circuit != crate::breaker::CircuitState::Closed,
            hits: c.hits.load(Relaxed),
            misses: c.misses.load(Relaxed),
            errors: link.errors,
            timeouts: link.timeouts,
            skipped: link.skipped,
            invalidations_sent: c.sent.load(Relaxed),
            invalidations_received: c.received.load(Relaxed),
            stale_loads_refused: c.refused.load(Relaxed),
            resubscribed: c.resubscribed.load(Relaxed),
        }
    }

    /// The shared entry under `key` (its tag, body and remaining freshness) and its lease.
    pub async fn get(&self, key: &str) -> Found {
        let key = stored(key);
        // (lease counter, tag and body), then the key's time to live.
        type Stored = (Option<String>, Option<Vec<u8>>);
        let found: Option<(Stored, i64)> = self
            .link
            .run(|mut c| async move {
                redis::pipe()
                    .cmd("HMGET")
                    .arg(&key)
                    .arg("t")
                    .arg("b")
                    .pttl(&key)
                    .query_async(&mut c)
                    .await
            })
            .await;
        let Some(((counter, value), ttl)) = found else {
            self.counts.misses.fetch_add(1, Relaxed);
            return Found::default();
        };
        let lease = Lease(Some(counter.unwrap_or_default()));
        let entry = value.and_then(|value| {
            let at = value.iter().position(|b| *b == b'\n')?;
            let tag = std::str::from_utf8(&value[..at]).ok()?;
            let fresh_for = Duration::from_millis(u64::try_from(ttl).ok().filter(|t| *t > 0)?);
            Some((
                Arc::from(tag),
                Bytes::copy_from_slice(&value[at + 1..]),
                fresh_for,
            ))
        });
        let counter = if entry.is_some() {
            &self.counts.hits
        } else {
            &self.counts.misses
        };
        counter.fetch_add(1, Relaxed);
        Found { entry, lease }
    }

    /// Stores a load's body under `key` if no invalidation came since its lookup read `lease`.
    pub async fn set(&self, key: &str, lease: Lease, tag: &str, body: &[u8], fresh_for: Duration) {
        let millis = fresh_for.as_millis() as u64;
        let Some(lease) = lease.0 else {
            return;
        };
        if millis == 0 {
            return;
        }
        let mut value = Vec::with_capacity(tag.len() + 1 + body.len());
        value.extend_from_slice(tag.as_bytes());
        value.push(b'\n');
        value.extend_from_slice(body);
        let key = stored(key);
        let stored = self
            .link
            .run(|mut c| async move {
                redis::Script::new(SET_IF_LEASED)
                    .key(&key)
                    .arg(lease)
                    .arg(value)
                    .arg(millis)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        if stored == Some(0) {
            self.counts.refused.fetch_add(1, Relaxed);
        }
    }

    /// `PING`, through the circuit: whether Redis answers now (readiness' check).
    pub async fn ping(&self) -> bool {
        self.link.ping().await
    }

    /// Invalidates `keys` in the shared tier (each lease counter moves on, the body goes),
    /// bumps the shared generation of `scopes`, and tells every instance. Answers the new
    /// generations, or `None` when Redis could not be reached: nothing may be assumed done.
    pub async fn invalidate(
        &self,
        keys: Vec<String>,
        scopes: Vec<String>,
    ) -> Option<Vec<(String, u64)>> {
        let (channel, instance) = (self.settings.channel.clone(), self.instance.to_string());
        let sent = self
            .link
            .run(|mut c| async move {
                let mut pipe = redis::pipe();
                for key in keys.iter().map(|k| stored(k)) {
                    pipe.hincr(&key, "t", 1).ignore();
                    pipe.hdel(&key, "b").ignore();
                    pipe.pexpire(&key, TOMBSTONE.as_millis() as i64).ignore();
                }
                for scope in &scopes {
                    pipe.incr(format!("gen:{scope}"), 1);
                }
                let generations: Vec<u64> = pipe.query_async(&mut c).await?;
                let message = Broadcast {
                    from: instance,
                    keys,
                    scopes: scopes.into_iter().zip(generations).collect(),
                    heartbeat: false,
                };
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(message.encode())
                    .query_async::<()>(&mut c)
                    .await?;
                Ok(message.scopes)
            })
            .await;
        if sent.is_some() {
            self.counts.sent.fetch_add(1, Relaxed);
        }
        sent
    }

    /// The shared generations of `scopes` now (0 for one never bumped); `None`: Redis could not
    /// be reached.
    pub async fn generations(&self, scopes: Vec<String>) -> Option<Vec<(String, u64)>> {
        if scopes.is_empty() {
            return Some(Vec::new());
        }
        let keys: Vec<String> = scopes.iter().map(|s| format!("gen:{s}")).collect();
        let values: Vec<Option<u64>> = self
            .link
            .run(|mut c| async move { redis::cmd("MGET").arg(&keys).query_async(&mut c).await })
            .await?;
        Some(
            scopes
                .into_iter()
                .zip(values)
                .map(|(s, g)| (s, g.unwrap_or(0)))
                .collect(),
        )
    }

    /// Publishes a heartbeat; whether Redis took it.
    async fn heartbeat(&self) -> bool {
        let (channel, message) = (
            self.settings.channel.clone(),
            Broadcast {
                from: self.instance.to_string(),
                heartbeat: true,
                ..Broadcast::default()
            }
            .encode(),
        );
        self.link
            .run(|mut c| async move {
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(message)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
            .is_some()
    }

    /// Listens to the channel for as long as the process lives, reconnecting after a break, and
    /// hands every other instance's invalidation to `apply`. `resubscribed` runs each time the
    /// channel is subscribed again after a break or a silence (what was broadcast meanwhile is
    /// lost, so the caller drops what it cannot vouch for). A heartbeat goes out every
    /// `keepalive`; three in a row not heard back and the subscription is deemed deaf.
    pub async fn listen(
        self,
        apply: impl Fn(Broadcast) + 'static,
        resubscribed: impl Fn() + 'static,
    ) {
        use futures_util::StreamExt;
        let keepalive = self.settings.keepalive;
        let mut broken = false;
        loop {
            let subscribed = async {
                let mut pubsub = self.link.client().get_async_pubsub().await?;
                pubsub.subscribe(&self.settings.channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            if let Ok(Ok(pubsub)) =
                tokio::time::timeout(self.link.command_timeout() * 4, subscribed).await
            {
                if broken {
                    self.counts.resubscribed.fetch_add(1, Relaxed);
                    resubscribed();
                }
                let mut messages = pubsub.into_on_message();
                let mut beat = tokio::time::interval(keepalive);
                beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // Since when a heartbeat Redis took has not come back. Only those count: one
                // not sent (Redis slow, its circuit open) says nothing about the subscription,
                // and flushing then would send every read to PostgreSQL for nothing.
                let unheard: Rc<Cell<Option<tokio::time::Instant>>> = Rc::default();
                let mut heard = tokio::time::Instant::now();
                loop {
                    tokio::select! {
                        message = messages.next() => {
                            let Some(message) = message else { break };
                            let Ok(text) = message.get_payload::<String>() else {
                                continue;
                            };
                            let broadcast = Broadcast::decode(&text);
                            if broadcast.from == *self.instance {
                                heard = tokio::time::Instant::now();
                            } else if !broadcast.heartbeat {
                                self.counts.received.fetch_add(1, Relaxed);
                                apply(broadcast);
                            }
                        }
                        _ = beat.tick() => {
                            // One heard after it was sent answers it (and the ones before).
                            if unheard.get().is_some_and(|at| heard >= at) {
                                unheard.set(None);
                            }
                            if unheard.get().is_some_and(|at| at.elapsed() > keepalive * 3) {
                                tracing::warn!("the invalidation channel went silent: subscribing again");
                                break;
                            }
                            let (this, unheard) = (self.clone(), Rc::clone(&unheard));
                            actix_rt::spawn(async move {
                                let sent_at = tokio::time::Instant::now();
                                if this.heartbeat().await && unheard.get().is_none() {
                                    unheard.set(Some(sent_at));
                                }
                            });
                        }
                    }
                }
            }
            // Broken, deaf or refused: try again shortly.
            broken = true;
            tokio::time::sleep(
                self.settings
                    .resubscribe_after
                    .max(Duration::from_millis(200)),
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broadcast_survives_its_encoding() {
        let message = Broadcast {
            from: "a1".into(),
            keys: vec!["product:m:1".into(), "product:m:2".into()],
            scopes: vec![("merchant:m".into(), 7)],
            heartbeat: false,
        };
        assert_eq!(Broadcast::decode(&message.encode()), message);
        let beat = Broadcast {
            from: "a1".into(),
            heartbeat: true,
            ..Broadcast::default()
        };
        assert_eq!(Broadcast::decode(&beat.encode()), beat);
    }
}
