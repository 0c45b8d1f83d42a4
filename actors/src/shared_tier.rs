//! The Redis tier of [`crate::Cache`]: entries shared by every instance, and the channel that
//! tells every instance of an invalidation.
//!
//! Every command has a timeout, so a hung Redis cannot stall a request. A breaker per tier skips
//! Redis after consecutive failures or timeouts for a cool-down, then lets one command probe it:
//! requests are served from memory and PostgreSQL meanwhile, and the tier comes back by itself.
//! A lost invalidation message (Redis restarted) cannot outlive an entry's freshness: entries in
//! both tiers expire on their own.
//!
//! Stored values are the entity tag, a newline, then the body, with the entry's freshness as
//! their expiry. Invalidations: `DEL` of the keys, `INCR gen:<scope>` for each scope, and one
//! `PUBLISH` of `i <instance>` then `k <key>` and `s <scope> <generation>` lines.

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct SharedTierSettings {
    pub url: String,
    /// Every command's (and every connection attempt's) time limit.
    pub command_timeout: Duration,
    /// Failures in a row that open the breaker.
    pub failures_to_open: u32,
    /// How long an open breaker skips Redis before one probe.
    pub open_for: Duration,
    pub channel: String,
}

#[derive(Debug, Default)]
struct Health {
    failures_in_a_row: AtomicU32,
    open_until: Mutex<Option<Instant>>,
    up: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    skipped: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
}

/// The Redis tier's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SharedTierSnapshot {
    /// The last command succeeded and the breaker is closed.
    pub up: bool,
    pub breaker_open: bool,
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    pub timeouts: u64,
    /// Commands not sent because the breaker was open.
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
    client: redis::Client,
    connection: Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>,
    health: Arc<Health>,
    settings: SharedTierSettings,
    instance: Arc<str>,
}

impl SharedTier {
    pub fn new(settings: SharedTierSettings, instance: &str) -> redis::RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(settings.url.as_str())?,
            connection: Arc::new(tokio::sync::Mutex::new(None)),
            health: Arc::new(Health::default()),
            settings,
            instance: Arc::from(instance),
        })
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn snapshot(&self) -> SharedTierSnapshot {
        let h = &self.health;
        SharedTierSnapshot {
            up: h.up.load(Relaxed) && !self.is_open(),
            breaker_open: self.is_open(),
            hits: h.hits.load(Relaxed),
            misses: h.misses.load(Relaxed),
            errors: h.errors.load(Relaxed),
            timeouts: h.timeouts.load(Relaxed),
            skipped: h.skipped.load(Relaxed),
            invalidations_sent: h.sent.load(Relaxed),
            invalidations_received: h.received.load(Relaxed),
        }
    }

    fn is_open(&self) -> bool {
        self.health
            .open_until
            .lock()
            .map(|until| until.is_some_and(|t| Instant::now() < t))
            .unwrap_or(false)
    }

    /// Closed, or open past its cool-down (then this command is the probe).
    fn admits(&self) -> bool {
        let Ok(mut until) = self.health.open_until.lock() else {
            return true;
        };
        match *until {
            Some(t) if Instant::now() < t => false,
            Some(_) => {
                // Half-open: this command probes; others stay out until it answers.
                *until = Some(Instant::now() + self.settings.open_for);
                true
            }
            None => true,
        }
    }

    fn succeeded(&self) {
        self.health.failures_in_a_row.store(0, Relaxed);
        self.health.up.store(true, Relaxed);
        if let Ok(mut until) = self.health.open_until.lock() {
            *until = None;
        }
    }

    fn failed(&self, timed_out: bool) {
        let counter = if timed_out {
            &self.health.timeouts
        } else {
            &self.health.errors
        };
        counter.fetch_add(1, Relaxed);
        self.health.up.store(false, Relaxed);
        let failures = self.health.failures_in_a_row.fetch_add(1, Relaxed) + 1;
        if failures >= self.settings.failures_to_open {
            if let Ok(mut until) = self.health.open_until.lock() {
                if until.is_none_or(|t| Instant::now() >= t) {
                    tracing::warn!(failures, "redis tier skipped for a while");
                }
                *until = Some(Instant::now() + self.settings.open_for);
            }
        }
    }

    async fn connection(&self) -> Result<MultiplexedConnection, bool> {
        let mut held = self.connection.lock().await;
        if let Some(c) = held.as_ref() {
            return Ok(c.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.command_timeout))
            .set_response_timeout(Some(self.settings.command_timeout));
        let made = tokio::time::timeout(
            self.settings.command_timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        match made {
            Ok(Ok(c)) => {
                *held = Some(c.clone());
                Ok(c)
            }
            Ok(Err(_)) => Err(false),
            Err(_) => Err(true),
        }
    }

    /// Runs one command through the breaker, within the command timeout.
    async fn run<T, F, Fut>(&self, command: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.admits() {
            self.health.skipped.fetch_add(1, Relaxed);
            return None;
        }
        let connection = match self.connection().await {
            Ok(c) => c,
            Err(timed_out) => {
                self.failed(timed_out);
                return None;
            }
        };
        match tokio::time::timeout(self.settings.command_timeout, command(connection)).await {
            Ok(Ok(value)) => {
                self.succeeded();
                Some(value)
            }
            outcome => {
                // A broken or hung connection is made anew on the next command.
                *self.connection.lock().await = None;
                self.failed(outcome.is_err());
                None
            }
        }
    }

    /// The shared entry under `key`: its tag, body and remaining freshness.
    pub async fn get(&self, key: &str) -> Option<(Arc<str>, Bytes, Duration)> {
        let key = key.to_owned();
        let found: Option<(Option<Vec<u8>>, i64)> = self
            .run(
                |mut c| async move { redis::pipe().get(&key).pttl(&key).query_async(&mut c).await },
            )
            .await;
        let (Some(value), ttl) = found? else {
            self.health.misses.fetch_add(1, Relaxed);
            return None;
        };
        let at = value.iter().position(|b| *b == b'\n')?;
        let tag = std::str::from_utf8(&value[..at]).ok()?;
        let fresh_for = Duration::from_millis(u64::try_from(ttl).ok().filter(|t| *t > 0)?);
        self.health.hits.fetch_add(1, Relaxed);
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
        self.run(|mut c| async move {
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

    /// `PING`, through the breaker: whether Redis answers now (readiness' check).
    pub async fn ping(&self) -> bool {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .is_some()
    }

    /// Drops `keys` from the shared tier only (no broadcast).
    pub async fn delete(&self, keys: Vec<String>) {
        if keys.is_empty() {
            return;
        }
        self.run(
            |mut c| async move { redis::cmd("DEL").arg(&keys).query_async::<()>(&mut c).await },
        )
        .await;
    }

    /// Drops `keys` from the shared tier, bumps the shared generation of `scopes`, and tells
    /// every instance. Answers the new generations (none when Redis could not be reached).
    pub async fn invalidate(&self, keys: Vec<String>, scopes: Vec<String>) -> Vec<(String, u64)> {
        let (channel, instance) = (self.settings.channel.clone(), self.instance.to_string());
        let sent = self
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
            self.health.sent.fetch_add(1, Relaxed);
        }
        sent.unwrap_or_default()
    }

    /// Listens to the channel for as long as the process lives, reconnecting after a break, and
    /// hands every other instance's invalidation to `apply`.
    pub async fn listen(self, apply: impl Fn(Broadcast) + 'static) {
        use futures_util::StreamExt;
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&self.settings.channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            if let Ok(Ok(pubsub)) =
                tokio::time::timeout(self.settings.command_timeout * 4, subscribed).await
            {
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    let Ok(text) = message.get_payload::<String>() else {
                        continue;
                    };
                    let broadcast = Broadcast::decode(&text);
                    if broadcast.from != *self.instance {
                        self.health.received.fetch_add(1, Relaxed);
                        apply(broadcast);
                    }
                }
            }
            // Broken or refused: try again shortly (what was missed expires on its own).
            tokio::time::sleep(self.settings.open_for.max(Duration::from_millis(200))).await;
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
