//! Typed, layered configuration: the built-in defaults (`config/default.toml`, compiled in),
//! then `config/<RAMPART_ENV>.toml`, then `RAMPART__SECTION__KEY` variables. Unknown keys and
//! invalid values are errors that name the key.

mod load;
pub mod sections;
pub mod validate;

pub use sections::{
    parse_net, ActorLimits, ActorSettings, AdminSettings, BreakerConfig, CacheSettings,
    DatabaseSettings, DevSettings, EmailSettings, HealthSettings, JobSettings, LogFormat,
    LogSettings, MemorySettings, OverloadSettings, PaginationSettings, RateLimitClass,
    RateLimitClasses, RateLimitSettings, RedisSettings, Secret, ServerSettings, Settings,
    SmsSettings, TelemetrySettings, WebhookSettings,
};
pub use validate::SettingsError;

#[cfg(test)]
mod tests;
