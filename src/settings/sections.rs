//! The settings' shape: one struct per section (`deny_unknown_fields`), secrets that never
//! print, and what the sections derive (trusted proxy ranges, breaker settings).

use ipnet::IpNet;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    pub pagination: PaginationSettings,
    pub telemetry: TelemetrySettings,
    pub sms: SmsSettings,
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
    /// How often an instance sends itself a heartbeat through the invalidation channel; three
    /// not heard back and it subscribes again (flushing what it could not hear meanwhile).
    pub keepalive_ms: u64,
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
    /// How long connecting to the relay and a whole send may take; past it the send is a
    /// failed attempt.
    pub timeout_ms: u64,
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

/// Offset pages' window and how far a list's `total` is counted (API.md, Pagination).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PaginationSettings {
    /// A page whose first row lies this deep or deeper is refused; cursors are the way on.
    pub max_offset: u64,
    /// `total` is exact up to this many rows; beyond it `total_exact` is false.
    pub max_total: u64,
}

/// Traces over OTLP/HTTP (API.md, Configuration): accepted from the first release on, so a
/// deployment's configuration never breaks as the exporter lands.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The collector's base URL (unset: nothing is exported).
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The share of new traces kept; a sampled incoming `traceparent` is always kept.
    pub sample_ratio: f64,
}

/// SMS to customers (API.md, Background work): a Twilio-compatible provider, or files.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmsSettings {
    #[serde(default)]
    pub provider_url: Option<String>,
    #[serde(default)]
    pub account_sid: Option<String>,
    #[serde(default)]
    pub auth_token: Option<Secret>,
    #[serde(default)]
    pub from: Option<String>,
    pub outbox_dir: PathBuf,
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
