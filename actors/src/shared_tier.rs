//! The Redis tier of [`crate::Cache`]: entries shared by every instance, and the channel that
//! tells every instance of an invalidation.
//!
//! Commands go through the [`RedisLink`]: a timeout on each, so a hung Redis cannot stall a
//! request, and Redis's circuit, which skips it after failures or timeouts for its wait, then
//! probes it: requests are served from memory and PostgreSQL meanwhile, and the tier comes back
//! by itself.
//! A lost invalidation message (Redis restarted) cannot outlive an entry's freshness: entries in
//! both tiers expire on their own.
//!
//! Stored values are the entity tag, a newline, then the body, with the entry's freshness as
//! their expiry. Invalidations: `DEL` of the keys, `INCR gen:<scope>` for each scope, and one
//! `PUBLISH` of `i <instance>` then `k <key>` and `s <scope> <generation>` lines.

use crate::redis_link::RedisLink;
use bytes::Bytes;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SharedTierSettings {
    pub channel: String,
    /// How long the listener waits before subscribing again after a break.
    pub resubscribe_after: Duration,
}

#[derive(Debug, Default)]
struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
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
}

/// An invalidation as the channel carries it.
#[derive(Debug, Default, PartialEq)]
pub struct Broadcast {
    pub from: String,
    pub keys: Vec<String>,
    pub scopes: Vec<(String, u64)>,
}

impl Broadcast {
    fn encode(&self) -> String {
        let mut text = format!("i {}\n", self.from);
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
        }
    }

    /// The shared entry under `key`: its tag, body and remaining freshness.
    pub async fn get(&self, key: &str) -> Option<(Arc<str>, Bytes, Duration)> {
        let key = key.to_owned();
        let found: Option<(Option<Vec<u8>>, i64)> = self
            .link
            .run(
                |mut c| async move { redis::pipe().get(&key).pttl(&key).query_async(&mut c).await },
            )
            .await;
        let (Some(value), ttl) = found? else {
            self.counts.misses.fetch_add(1, Relaxed);
            return None;
        };
        let at = value.iter().position(|b| *b == b'\n')?;
        let tag = std::str::from_utf8(&value[..at]).ok()?;
        let fresh_for = Duration::from_millis(u64::try_from(ttl).ok().filter(|t| *t > 0)?);
        self.counts.hits.fetch_add(1, Relaxed);
        Some((
            Arc::from(tag),
            Bytes::copy_from_slice(&value[at + 1..]),
            fresh_for,
        ))
    }

    pub async fn set(&self, key: &str, tag: &str, body: &[u8], fresh_for: Duration) {
        let millis = fresh_for.as_millis() as u64;
        if millis == 0 {
            return;
        }
        let mut value = Vec::with_capacity(tag.len() + 1 + body.len());
        value.extend_from_slice(tag.as_bytes());
        value.push(b'\n');
        value.extend_from_slice(body);
        let key = key.to_owned();
        self.link
            .run(|mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(value)
                    .arg("PX")
                    .arg(millis)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
    }

    /// `PING`, through the circuit: whether Redis answers now (readiness' check).
    pub async fn ping(&self) -> bool {
        self.link.ping().await
    }

    /// Drops `keys` from the shared tier only (no broadcast).
    pub async fn delete(&self, keys: Vec<String>) {
        if keys.is_empty() {
            return;
        }
        self.link
            .run(
                |mut c| async move { redis::cmd("DEL").arg(&keys).query_async::<()>(&mut c).await },
            )
            .await;
    }

    /// Drops `keys` from the shared tier, bumps the shared generation of `scopes`, and tells
    /// every instance. Answers the new generations (none when Redis could not be reached).
    pub async fn invalidate(&self, keys: Vec<String>, scopes: Vec<String>) -> Vec<(String, u64)> {
        let (channel, instance) = (self.settings.channel.clone(), self.instance.to_string());
        let sent = self
            .link
            .run(|mut c| async move {
                let mut pipe = redis::pipe();
                if !keys.is_empty() {
                    pipe.del(&keys).ignore();
                }
                for scope in &scopes {
                    pipe.incr(format!("gen:{scope}"), 1);
                }
                let generations: Vec<u64> = pipe.query_async(&mut c).await?;
                let message = Broadcast {
                    from: instance,
                    keys,
                    scopes: scopes.into_iter().zip(generations).collect(),
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
        sent.unwrap_or_default()
    }

    /// Listens to the channel for as long as the process lives, reconnecting after a break, and
    /// hands every other instance's invalidation to `apply`; `resubscribed` runs each time the
    /// channel is subscribed again after a break (what was broadcast meanwhile is lost).
    pub async fn listen(
        self,
        apply: impl Fn(Broadcast) + 'static,
        resubscribed: impl Fn() + 'static,
    ) {
        use futures_util::StreamExt;
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
                    resubscribed();
                }
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    let Ok(text) = message.get_payload::<String>() else {
                        continue;
                    };
                    let broadcast = Broadcast::decode(&text);
                    if broadcast.from != *self.instance {
                        self.counts.received.fetch_add(1, Relaxed);
                        apply(broadcast);
                    }
                }
            }
            // Broken or refused: try again shortly (what was missed expires on its own).
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
        };
        assert_eq!(Broadcast::decode(&message.encode()), message);
    }
}
