//! What a loaded configuration must satisfy: every bound checked at startup, the key named in
//! the error.

use crate::settings::sections::{parse_net, Settings};
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

pub(crate) fn invalid(key: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key,
        message: message.into(),
    }
}

impl Settings {
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
        if let Some(u) = &self.sms.provider_url {
            let ok = url::Url::parse(u)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(invalid("sms.provider_url", "must be an http or https URL"));
            }
            if self.sms.from.as_deref().is_none_or(|f| f.trim().is_empty()) {
                return Err(invalid(
                    "sms.from",
                    "must be set when sms.provider_url is (the sender of every SMS)",
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
        positive("redis.keepalive_ms", self.redis.keepalive_ms)?;
        positive("cache.max_bytes", self.cache.max_bytes)?;
        at_most(
            "jobs.backoff_base_ms",
            self.jobs.backoff_base_ms,
            86_400_000,
        )?;
        at_most("jobs.lease_secs", self.jobs.lease_secs, 86_400)?;
        positive("jobs.lease_secs", self.jobs.lease_secs)?;
        positive("jobs.poll_interval_ms", self.jobs.poll_interval_ms)?;
        positive("email.timeout_ms", self.email.timeout_ms)?;
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
        positive("pagination.max_offset", self.pagination.max_offset)?;
        positive("pagination.max_total", self.pagination.max_total)?;
        let ratio = self.telemetry.sample_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(invalid(
                "telemetry.sample_ratio",
                format!("must lie between 0 and 1, got {ratio}"),
            ));
        }
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
}
