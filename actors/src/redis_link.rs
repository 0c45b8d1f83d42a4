//! One Redis dependency as every user of it sees it: a multiplexed connection made on demand,
//! a time limit on every command and connection attempt (a hung Redis cannot stall a request),
//! and the dependency's circuit ([`Circuit`]): after failures or timeouts Redis is skipped at
//! once for the circuit's wait, then probed, and used again by itself when it answers.
//!
//! The cache's shared tier and the rate limiter share one link, so they share one circuit: Redis
//! down is noticed once, for both.

use crate::breaker::{Circuit, CircuitState};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Default)]
struct Health {
    up: AtomicBool,
    errors: AtomicU64,
    timeouts: AtomicU64,
    skipped: AtomicU64,
}

/// The link's figures.
#[derive(Debug, Clone, Serialize)]
pub struct LinkSnapshot {
    /// The last command succeeded and the circuit is closed.
    pub up: bool,
    pub circuit: CircuitState,
    pub errors: u64,
    pub timeouts: u64,
    /// Commands not sent because the circuit was open.
    pub skipped: u64,
}

#[derive(Clone)]
pub struct RedisLink {
    client: redis::Client,
    connection: Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>,
    health: Arc<Health>,
    circuit: Circuit,
    command_timeout: Duration,
}

impl RedisLink {
    pub fn new(url: &str, command_timeout: Duration, circuit: Circuit) -> redis::RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            connection: Arc::new(tokio::sync::Mutex::new(None)),
            health: Arc::new(Health::default()),
            circuit,
            command_timeout,
        })
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    pub fn circuit(&self) -> &Circuit {
        &self.circuit
    }

    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    pub fn snapshot(&self) -> LinkSnapshot {
        let circuit = self.circuit.state();
        let h = &self.health;
        LinkSnapshot {
            up: h.up.load(Relaxed) && circuit == CircuitState::Closed,
            circuit,
            errors: h.errors.load(Relaxed),
            timeouts: h.timeouts.load(Relaxed),
            skipped: h.skipped.load(Relaxed),
        }
    }

    async fn connection(&self) -> Result<MultiplexedConnection, bool> {
        let mut held = self.connection.lock().await;
        if let Some(c) = held.as_ref() {
            return Ok(c.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.command_timeout))
            .set_response_timeout(Some(self.command_timeout));
        let made = tokio::time::timeout(
            self.command_timeout,
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

    fn failed(&self, timed_out: bool) {
        let counter = if timed_out {
            &self.health.timeouts
        } else {
            &self.health.errors
        };
        counter.fetch_add(1, Relaxed);
        self.health.up.store(false, Relaxed);
    }

    /// Runs one command through the circuit, within the command timeout. `None`: skipped
    /// (circuit open), failed or timed out.
    pub async fn run<T, F, Fut>(&self, command: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let Ok(call) = self.circuit.try_call() else {
            self.health.skipped.fetch_add(1, Relaxed);
            return None;
        };
        let connection = match self.connection().await {
            Ok(c) => c,
            Err(timed_out) => {
                self.failed(timed_out);
                call.failed();
                return None;
            }
        };
        match tokio::time::timeout(self.command_timeout, command(connection)).await {
            Ok(Ok(value)) => {
                self.health.up.store(true, Relaxed);
                call.succeeded();
                Some(value)
            }
            outcome => {
                // A broken or hung connection is made anew on the next command.
                *self.connection.lock().await = None;
                self.failed(outcome.is_err());
                call.failed();
                None
            }
        }
    }

    /// `PING` through the circuit: whether Redis answers now.
    pub async fn ping(&self) -> bool {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .is_some()
    }
}
