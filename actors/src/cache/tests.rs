//! The cache's tier and generations, tested without an actor.

use super::*;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn entry(negative: bool) -> Arc<Entry> {
    let now = Instant::now();
    Arc::new(Entry {
        body: Bytes::from_static(b"{}"),
        tag: Arc::from(""),
        fresh_until: now + Duration::from_secs(60),
        stale_until: now + Duration::from_secs(60),
        negative,
    })
}

#[test]
fn dropping_the_absences_keeps_every_value() {
    let reader = Cache::reader(&CacheSettings {
        max_entries: 100,
        max_bytes: 1 << 20,
        stale_for: Duration::from_secs(60),
    });
    reader.tier.insert(Arc::from("product:a"), entry(true));
    reader.tier.insert(Arc::from("product:b"), entry(false));
    // A list page carries an empty tag too: only the flag tells an absence.
    reader.tier.insert(Arc::from("list:a"), entry(false));
    assert_eq!(reader.drop_absent(), 1);
    assert!(matches!(reader.lookup("product:a"), Lookup::Missing));
    assert!(matches!(reader.lookup("product:b"), Lookup::Fresh(e) if !e.is_negative()));
    assert!(matches!(reader.lookup("list:a"), Lookup::Fresh(_)));
}

/// A cache with a Redis tier that is never reached: enough to see how generations move.
fn cache_with_a_shared_tier() -> Cache {
    use crate::breaker::BreakerSettings;
    use crate::shared_tier::SharedTierSettings;
    let circuit =
        crate::breakers::BreakerBoard::new().register("redis", BreakerSettings::default());
    let link = crate::redis_link::RedisLink::new(
        "redis://127.0.0.1:1",
        Duration::from_millis(10),
        circuit,
    )
    .expect("a link");
    let shared = SharedTier::new(
        link,
        SharedTierSettings {
            channel: "c".into(),
            resubscribe_after: Duration::from_secs(1),
            keepalive: Duration::from_secs(1),
        },
        "me",
    );
    let settings = CacheSettings {
        max_entries: 100,
        max_bytes: 1 << 20,
        stale_for: Duration::ZERO,
    };
    let supervision = Supervision::new(
        Arc::new(crate::stats::ActorStats::new("cache", 16)),
        crate::supervision::RestartPolicy::default(),
    );
    Cache::new(
        settings,
        Cache::reader(&settings),
        Some(shared),
        supervision,
    )
}

#[test]
fn a_bump_redis_has_not_acknowledged_keys_lists_apart_from_every_shared_generation() {
    let mut cache = cache_with_a_shared_tier();
    let scope = || vec!["merchant:m".to_owned()];
    let at = |g: u64| vec![("merchant:m".to_owned(), g)];
    cache.adopt(&at(5), true);
    assert_eq!(cache.reader.generation("merchant:m"), 5);

    cache.bump_own(&scope());
    let first = cache.reader.generation("merchant:m");
    assert!(first >= 1 << 63, "never a counter's value: {first}");
    cache.bump_own(&scope());
    let second = cache.reader.generation("merchant:m");
    assert!(second >= 1 << 63 && second != first);

    // Another instance's bump moves the shared count, but this instance's own write is not in
    // Redis yet: its lists stay keyed apart, under a new key (the other write must show too).
    cache.adopt(&at(6), true);
    let third = cache.reader.generation("merchant:m");
    assert!(third >= 1 << 63 && third != second, "{third}");
    cache.acknowledged(&at(7), false);
    assert_eq!(
        cache.reader.generation("merchant:m"),
        third,
        "one bump still owed"
    );
    cache.acknowledged(&at(8), false);
    assert_eq!(cache.reader.generation("merchant:m"), 8);
    // Older news never moves it back.
    cache.adopt(&at(7), true);
    assert_eq!(cache.reader.generation("merchant:m"), 8);
}
