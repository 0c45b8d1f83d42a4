//! Typed, layered configuration: the built-in defaults (`config/default.toml`, compiled in),
//! then `config/<RAMPART_ENV>.toml`, then `RAMPART__SECTION__KEY` variables. Unknown keys and
//! invalid values are errors that name the key.

use config::{Config, Environment, File, FileFormat};
use ipnet::IpNet;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key,
        message: message.into(),
    }
}

/// A value that must never reach a log line.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Secrets serialize redacted too: a dump of the settings shows that a secret is set, never it.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub rate_limit: RateLimitSettings,
    pub breakers: BreakerConfig,
    pub cache: CacheSettings,
    pub jobs: JobSettings,
    pub memory: MemorySettings,
    pub overload: OverloadSettings,
    pub email: EmailSettings,
    pub webhooks: WebhookSettings,
    pub health: HealthSettings,
    pub log: LogSettings,
    pub actors: ActorSettings,
    pub dev: DevSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub workers: usize,
    pub trusted_proxies: Vec<String>,
    pub body_limit_bytes: usize,
    pub shutdown_timeout_secs: u64,
    pub keep_alive_secs: u64,
    pub max_connections: usize,
    /// The deadline of every request: past it the client gets 503 and the work is abandoned.
    pub request_timeout_ms: u64,
    /// Signs pagination cursors. Every instance of a deployment needs the same value; required
    /// in production. Unset elsewhere, a random key per process (cursors die with it).
    #[serde(default)]
    pub cursor_secret: Option<Secret>,
    /// When set, `/metrics` and `/api/v1/ops/stats` are served only on this port (404 on
    /// `port`); `/health` and `/health/ready` answer on both; everything else on `port` only.
    #[serde(default)]
    pub management_port: Option<u16>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    #[serde(default)]
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    #[serde(default)]
    pub url: Option<Secret>,
    pub data_dir: PathBuf,
    pub max_connections: usize,
    pub max_inflight: usize,
    pub wait_timeout_ms: u64,
    pub create_timeout_ms: u64,
    pub recycle_timeout_ms: u64,
    pub statement_timeout_ms: u64,
    /// A session idle inside a transaction this long is ended by the server, releasing its locks.
    pub idle_in_transaction_timeout_ms: u64,
    /// TCP keepalive: idle seconds before the first probe; a dead peer is noticed after about
    /// three times this.
    pub tcp_keepalive_secs: u64,
    /// Streaming replicas for catalog reads that miss the cache (see `crate::replicas`).
    #[serde(default)]
    pub replica_urls: Vec<Secret>,
    /// A replica further behind the primary than this is skipped.
    pub replica_max_lag_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    #[serde(default)]
    pub url: Option<Secret>,
    /// Every Redis command's time limit: a hung Redis costs a request at most this.
    pub command_timeout_ms: u64,
    /// Failures in a row after which the Redis tier is skipped...
    pub breaker_failures: u32,
    /// ...for this long, before one command probes it again.
    pub breaker_open_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub enabled: bool,
    /// Keys each class holds in process at most (idle ones out first).
    pub max_keys: u64,
    /// The client of a per-client-IP class is its IPv4 address, or its IPv6 address masked to
    /// this many leading bits (1..=128; default 64: one subscriber's block is one client).
    pub ipv6_prefix: u8,
    pub classes: RateLimitClasses,
}

/// Every dependency's circuit (resilience4j's model); Redis's uses `redis.breaker_*` instead.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    pub failure_rate_percent: u32,
    pub slow_call_rate_percent: u32,
    pub slow_call_ms: u64,
    pub window: u32,
    pub minimum_calls: u32,
    pub open_ms: u64,
    pub half_open_probes: u32,
    /// Circuits made at run time (webhook hosts) kept at most.
    pub max_circuits: usize,
}

impl BreakerConfig {
    pub fn breaker(&self) -> rampart_actors::BreakerSettings {
        rampart_actors::BreakerSettings {
            failure_rate: f64::from(self.failure_rate_percent) / 100.0,
            slow_call_rate: f64::from(self.slow_call_rate_percent) / 100.0,
            slow_call: Duration::from_millis(self.slow_call_ms),
            window: self.window,
            minimum_calls: self.minimum_calls,
            open_for: Duration::from_millis(self.open_ms),
            half_open_probes: self.half_open_probes,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitClasses {
    pub storefront: RateLimitClass,
    pub checkout: RateLimitClass,
    pub merchant: RateLimitClass,
    /// Failed credentials, per client IP: every 401 under `/api/v1/` counts.
    pub unauthenticated: RateLimitClass,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitClass {
    pub limit: u32,
    pub period_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    pub product_ttl_secs: u64,
    pub list_ttl_secs: u64,
    pub max_entries: u64,
    /// Bytes the in-process tier may hold (bodies, keys and tags).
    pub max_bytes: u64,
    pub storefront_max_age_secs: u64,
    pub stale_if_error_secs: u64,
    /// How long a storefront read of a product that does not exist (or is archived) is
    /// remembered on this instance (0: not at all; default 1, the contract's bound on a write's
    /// visibility elsewhere should its broadcast be lost). Creating or restoring it invalidates
    /// that.
    pub not_found_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobSettings {
    /// Whether this instance dispatches jobs (off: it only writes them).
    pub enabled: bool,
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub lease_secs: u64,
    /// How often the queue is polled besides the wake-ups (and leases that ran out are put back).
    pub poll_interval_ms: u64,
    /// While at least this many writes are in flight at the edge, each queue runs one job at a
    /// time: background work yields to requests (0: never).
    pub yield_at_writes: usize,
    pub concurrency: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySettings {
    pub soft_limit_mb: u64,
    pub hard_limit_mb: u64,
    pub check_interval_ms: u64,
    /// Samples kept for the trend (one per interval).
    pub window_samples: usize,
    /// Steady growth above this over the window is flagged as a suspected leak.
    pub leak_mb_per_min: u64,
    /// The share of its entries the cache keeps when memory turns critical.
    pub cache_keep_percent: u32,
}

/// The concurrency limit at the HTTP edge (see `rampart_actors::concurrency`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OverloadSettings {
    pub enabled: bool,
    /// Off: the limit stays at `initial_limit`.
    pub adaptive: bool,
    pub initial_limit: usize,
    pub min_limit: usize,
    pub max_limit: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    #[serde(default)]
    pub smtp_url: Option<Secret>,
    pub from: String,
    pub outbox_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    pub allow_private_targets: bool,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSettings {
    pub ready_timeout_ms: u64,
    /// How often readiness' dependency checks (PostgreSQL, Redis, the job queues) are sampled
    /// in the background; probes and scrapes read the latest sample.
    pub refresh_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
    /// Requests that take at least this long are logged with their request id (0: never).
    pub slow_request_ms: u64,
    /// Database commands that take at least this long are logged with their request id.
    pub slow_query_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActorSettings {
    pub call_deadline_ms: u64,
    pub breakers: ActorLimits,
    pub db: ActorLimits,
    pub cache: ActorLimits,
    pub limiter: ActorLimits,
    pub memory: ActorLimits,
    pub jobs: ActorLimits,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActorLimits {
    pub mailbox: usize,
    pub max_restarts: u32,
    pub restart_window_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DevSettings {
    pub demo_merchant: bool,
}

/// A trusted proxy range: a CIDR, or one address.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an IP address or CIDR"))
}

impl Settings {
    /// Loads the layers for `RAMPART_ENV` (default `development`) from `RAMPART_CONFIG_DIR`
    /// (default `config`) and the process environment.
    pub fn load() -> Result<Self, SettingsError> {
        let env = std::env::var("RAMPART_ENV").unwrap_or_else(|_| "development".to_owned());
        let dir = std::env::var_os("RAMPART_CONFIG_DIR")
            .map_or_else(|| PathBuf::from("config"), PathBuf::from);
        Self::load_layers(&dir, &env, true)
    }

    /// The built-in defaults alone: what the operator's guide lists.
    pub fn defaults() -> Result<Self, SettingsError> {
        let settings: Settings = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        Ok(settings)
    }

    /// The built-in defaults and `config/test.toml`, without the process environment: what the
    /// integration tests start from before setting their own values.
    pub fn for_tests() -> Result<Self, SettingsError> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        Self::load_layers(&dir, "test", false)
    }

    fn load_layers(dir: &Path, env: &str, with_environment: bool) -> Result<Self, SettingsError> {
        let mut builder = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(File::from(dir.join(format!("{env}.toml"))).required(false));
        if with_environment {
            builder = builder.add_source(
                Environment::with_prefix("RAMPART")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("server.trusted_proxies")
                    .with_list_parse_key("database.replica_urls"),
            );
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        if env == "production" && settings.server.cursor_secret.is_none() {
            return Err(invalid(
                "server.cursor_secret",
                "is required in production: every instance must sign cursors with the same key",
            ));
        }
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        let positive = |key, v: u64| {
            if v == 0 {
                Err(invalid(key, "must be greater than 0"))
            } else {
                Ok(())
            }
        };
        let at_most = |key, v: u64, max: u64| {
            if v > max {
                Err(invalid(key, format!("must be at most {max}")))
            } else {
                Ok(())
            }
        };
        if self.server.host.trim().is_empty() {
            return Err(invalid("server.host", "must not be empty"));
        }
        for cidr in &self.server.trusted_proxies {
            parse_net(cidr).map_err(|m| invalid("server.trusted_proxies", m))?;
        }
        positive(
            "server.body_limit_bytes",
            self.server.body_limit_bytes as u64,
        )?;
        positive("server.max_connections", self.server.max_connections as u64)?;
        positive("server.request_timeout_ms", self.server.request_timeout_ms)?;
        if let Some(secret) = &self.server.cursor_secret {
            if secret.expose().len() < 32 {
                return Err(invalid(
                    "server.cursor_secret",
                    "must be at least 32 characters",
                ));
            }
        }
        if let Some(url) = &self.database.url {
            tokio_postgres::Config::from_str(url.expose())
                .map_err(|e| invalid("database.url", e.to_string()))?;
        }
        for url in &self.database.replica_urls {
            tokio_postgres::Config::from_str(url.expose())
                .map_err(|e| invalid("database.replica_urls", e.to_string()))?;
        }
        positive(
            "database.replica_max_lag_ms",
            self.database.replica_max_lag_ms,
        )?;
        positive(
            "database.max_connections",
            self.database.max_connections as u64,
        )?;
        positive("database.max_inflight", self.database.max_inflight as u64)?;
        positive("database.wait_timeout_ms", self.database.wait_timeout_ms)?;
        positive(
            "database.create_timeout_ms",
            self.database.create_timeout_ms,
        )?;
        if let Some(url) = &self.redis.url {
            let u = url.expose();
            if !(u.starts_with("redis://")
                || u.starts_with("rediss://")
                || u.starts_with("unix://"))
            {
                return Err(invalid(
                    "redis.url",
                    "must start with redis://, rediss:// or unix://",
                ));
            }
        }
        for (key, class) in [
            (
                "rate_limit.classes.storefront",
                self.rate_limit.classes.storefront,
            ),
            (
                "rate_limit.classes.checkout",
                self.rate_limit.classes.checkout,
            ),
            (
                "rate_limit.classes.merchant",
                self.rate_limit.classes.merchant,
            ),
            (
                "rate_limit.classes.unauthenticated",
                self.rate_limit.classes.unauthenticated,
            ),
        ] {
            if class.limit == 0 || class.period_secs == 0 {
                return Err(invalid(key, "limit and period_secs must be greater than 0"));
            }
        }
        positive("rate_limit.max_keys", self.rate_limit.max_keys)?;
        if !(1..=128).contains(&self.rate_limit.ipv6_prefix) {
            return Err(invalid(
                "rate_limit.ipv6_prefix",
                "must be between 1 and 128",
            ));
        }
        let o = &self.overload;
        positive("overload.min_limit", o.min_limit as u64)?;
        if !(o.min_limit <= o.initial_limit && o.initial_limit <= o.max_limit) {
            return Err(invalid(
                "overload.initial_limit",
                "must lie between overload.min_limit and overload.max_limit",
            ));
        }
        positive("memory.check_interval_ms", self.memory.check_interval_ms)?;
        positive("memory.window_samples", self.memory.window_samples as u64)?;
        at_most(
            "memory.cache_keep_percent",
            u64::from(self.memory.cache_keep_percent),
            100,
        )?;
        let b = &self.breakers;
        at_most(
            "breakers.failure_rate_percent",
            u64::from(b.failure_rate_percent),
            100,
        )?;
        at_most(
            "breakers.slow_call_rate_percent",
            u64::from(b.slow_call_rate_percent),
            100,
        )?;
        positive(
            "breakers.failure_rate_percent",
            u64::from(b.failure_rate_percent),
        )?;
        positive(
            "breakers.slow_call_rate_percent",
            u64::from(b.slow_call_rate_percent),
        )?;
        positive("breakers.slow_call_ms", b.slow_call_ms)?;
        positive("breakers.window", u64::from(b.window))?;
        positive("breakers.minimum_calls", u64::from(b.minimum_calls))?;
        positive("breakers.open_ms", b.open_ms)?;
        positive("breakers.half_open_probes", u64::from(b.half_open_probes))?;
        positive("breakers.max_circuits", b.max_circuits as u64)?;
        if self.memory.soft_limit_mb > self.memory.hard_limit_mb {
            return Err(invalid(
                "memory.soft_limit_mb",
                "must not exceed memory.hard_limit_mb",
            ));
        }
        // Stored as PostgreSQL integers: bounded here so no cast can wrap.
        at_most("jobs.max_attempts", u64::from(self.jobs.max_attempts), 1000)?;
        positive("jobs.max_attempts", u64::from(self.jobs.max_attempts))?;
        positive("cache.max_entries", self.cache.max_entries)?;
        positive("redis.command_timeout_ms", self.redis.command_timeout_ms)?;
        positive(
            "redis.breaker_failures",
            u64::from(self.redis.breaker_failures),
        )?;
        positive("redis.breaker_open_ms", self.redis.breaker_open_ms)?;
        positive("cache.max_bytes", self.cache.max_bytes)?;
        at_most(
            "jobs.backoff_base_ms",
            self.jobs.backoff_base_ms,
            86_400_000,
        )?;
        at_most("jobs.lease_secs", self.jobs.lease_secs, 86_400)?;
        positive("jobs.lease_secs", self.jobs.lease_secs)?;
        positive("jobs.poll_interval_ms", self.jobs.poll_interval_ms)?;
        at_most(
            "jobs.poll_interval_ms",
            self.jobs.poll_interval_ms,
            3_600_000,
        )?;
        at_most("jobs.backoff_max_ms", self.jobs.backoff_max_ms, 86_400_000)?;
        positive("jobs.backoff_max_ms", self.jobs.backoff_max_ms)?;
        for (queue, n) in &self.jobs.concurrency {
            if *n == 0 || *n > 1024 {
                return Err(invalid(
                    "jobs.concurrency",
                    format!("{queue}: must be from 1 to 1024"),
                ));
            }
        }
        at_most(
            "database.statement_timeout_ms",
            self.database.statement_timeout_ms,
            i32::MAX as u64,
        )?;
        at_most(
            "database.idle_in_transaction_timeout_ms",
            self.database.idle_in_transaction_timeout_ms,
            i32::MAX as u64,
        )?;
        positive(
            "database.idle_in_transaction_timeout_ms",
            self.database.idle_in_transaction_timeout_ms,
        )?;
        positive(
            "database.tcp_keepalive_secs",
            self.database.tcp_keepalive_secs,
        )?;
        at_most(
            "server.request_timeout_ms",
            self.server.request_timeout_ms,
            i32::MAX as u64,
        )?;
        positive("health.ready_timeout_ms", self.health.ready_timeout_ms)?;
        positive("health.refresh_ms", self.health.refresh_ms)?;
        if self
            .server
            .management_port
            .is_some_and(|m| m != 0 && m == self.server.port)
        {
            return Err(invalid(
                "server.management_port",
                "must differ from server.port",
            ));
        }
        positive("actors.call_deadline_ms", self.actors.call_deadline_ms)?;
        positive("actors.db.mailbox", self.actors.db.mailbox as u64)?;
        positive("actors.cache.mailbox", self.actors.cache.mailbox as u64)?;
        tracing_subscriber::EnvFilter::try_new(&self.log.filter)
            .map_err(|e| invalid("log.filter", e.to_string()))?;
        if let Some(token) = &self.admin.token {
            if token.expose().len() < 12 {
                return Err(invalid("admin.token", "must be at least 12 characters"));
            }
        }
        Ok(())
    }

    pub fn trusted_proxies(&self) -> Vec<IpNet> {
        self.server
            .trusted_proxies
            .iter()
            .filter_map(|c| parse_net(c).ok())
            .collect()
    }

    pub fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_are_cidrs_or_single_addresses() {
        let net = parse_net("10.1.0.0/16").unwrap();
        assert!(net.contains(&"10.1.200.3".parse::<IpAddr>().unwrap()));
        assert!(!net.contains(&"10.2.0.1".parse::<IpAddr>().unwrap()));
        let one = parse_net("127.0.0.1").unwrap();
        assert!(one.contains(&"127.0.0.1".parse::<IpAddr>().unwrap()));
        assert!(!one.contains(&"127.0.0.2".parse::<IpAddr>().unwrap()));
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("::1").is_ok());
    }

    #[test]
    fn built_in_defaults_are_valid() {
        Settings::for_tests().unwrap();
    }

    #[test]
    fn the_ipv6_prefix_is_1_to_128_bits_and_64_by_default() {
        let mut s = Settings::for_tests().unwrap();
        assert_eq!(s.rate_limit.ipv6_prefix, 64);
        let c = s.rate_limit.classes.unauthenticated;
        assert_eq!((c.limit, c.period_secs), (60, 60));
        for ok in [1, 48, 128] {
            s.rate_limit.ipv6_prefix = ok;
            s.validate().unwrap();
        }
        for bad in [0, 129] {
            s.rate_limit.ipv6_prefix = bad;
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains("rate_limit.ipv6_prefix"), "{e}");
        }
    }
}
