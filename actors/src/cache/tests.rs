//! The cache's tier, tested without an actor.

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
