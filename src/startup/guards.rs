//! The guards as configured: the edge's concurrency lanes, the rate limit classes and the memory
//! monitor's thresholds, read from the settings.

use crate::settings::Settings;
use crate::state::EdgeLimits;
use rampart_actors::{ConcurrencyLimit, LimitClass, LimitSettings, MemorySettings};
use std::time::Duration;

/// The edge's lanes: reads at a fixed limit, writes adaptive (see [`EdgeLimits`]).
pub fn edge_limits(settings: &Settings) -> EdgeLimits {
    EdgeLimits {
        reads: ConcurrencyLimit::new(LimitSettings {
            adaptive: false,
            ..overload(settings)
        }),
        writes: ConcurrencyLimit::new(writes_lane(settings)),
    }
}

/// The edge's concurrency limit: adaptive, fixed, or (disabled) out of reach.
fn overload(settings: &Settings) -> LimitSettings {
    let o = &settings.overload;
    if !o.enabled {
        return LimitSettings {
            adaptive: false,
            initial: usize::MAX / 2,
            min: usize::MAX / 2,
            max: usize::MAX / 2,
        };
    }
    LimitSettings {
        adaptive: o.adaptive,
        initial: o.initial_limit,
        min: o.min_limit,
        max: o.max_limit,
    }
}

/// The writes' lane: adaptive between bounds the database sets. Never below the pool's
/// connections (fewer writes in flight than connections leaves the database idle, whatever the
/// latency says), never above what the `Db` actor holds (its running commands and its mailbox):
/// beyond that the excess waits at the edge, in order and against its deadline, rather than
/// being refused by a full mailbox.
fn writes_lane(settings: &Settings) -> LimitSettings {
    let lane = overload(settings);
    if !lane.adaptive {
        return lane;
    }
    let held = settings.database.max_inflight + settings.actors.db.mailbox;
    let max = lane.max.min(held).max(1);
    LimitSettings {
        min: lane.min.max(settings.database.max_connections).min(max),
        max,
        initial: lane.initial.min(max),
        ..lane
    }
}

/// The rate limit classes of `rate_limit.classes.*`, by the names the edge asks for.
pub fn limit_classes(settings: &Settings) -> Vec<LimitClass> {
    let c = &settings.rate_limit.classes;
    [
        ("storefront", c.storefront),
        ("checkout", c.checkout),
        ("merchant", c.merchant),
        ("unauthenticated", c.unauthenticated),
    ]
    .into_iter()
    .map(|(name, class)| LimitClass {
        name: name.to_owned(),
        limit: class.limit,
        period: Duration::from_secs(class.period_secs),
    })
    .collect()
}

/// The memory monitor's thresholds (`memory.*`).
pub fn memory_settings(settings: &Settings) -> MemorySettings {
    let m = &settings.memory;
    MemorySettings {
        interval: Settings::ms(m.check_interval_ms),
        soft_bytes: m.soft_limit_mb << 20,
        hard_bytes: m.hard_limit_mb << 20,
        window: m.window_samples,
        leak_bytes_per_sec: (m.leak_mb_per_min << 20) as f64 / 60.0,
        shrink_to: f64::from(m.cache_keep_percent) / 100.0,
    }
}
