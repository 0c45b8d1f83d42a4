//! Hot pure functions on the request path: cursor encode and decode, one GCRA step.

use criterion::{criterion_group, criterion_main, Criterion};
use rampart::domain::listing::{CursorKey, CursorScope, KeyValue, Position};
use std::hint::black_box;

fn cursors(c: &mut Criterion) {
    let key = CursorKey::new(b"bench-secret");
    let scope = CursorScope {
        listing: "storefront",
        merchant_id: uuid::Uuid::now_v7(),
        sort: "-created_at",
        filters: "ProductFilter { category: Some(\"tools\") }".into(),
    };
    let position = Position {
        key: KeyValue::Time(chrono::Utc::now()),
        id: uuid::Uuid::now_v7(),
    };
    let cursor = key.encode(&scope, &position);
    c.bench_function("cursor encode", |b| {
        b.iter(|| key.encode(black_box(&scope), black_box(&position)))
    });
    c.bench_function("cursor decode", |b| {
        b.iter(|| key.decode(black_box(&scope), black_box(&cursor)))
    });
}

fn gcra(c: &mut Criterion) {
    let limiter = rampart_actors::Gcra::new(600, std::time::Duration::from_secs(60));
    let mut tat = None;
    let mut now = 0u64;
    c.bench_function("gcra step", |b| {
        b.iter(|| {
            now += 50_000_000;
            if let rampart_actors::Decision::Allow { tat: t, .. } =
                limiter.check(black_box(tat), black_box(now))
            {
                tat = Some(t);
            }
        })
    });
}

criterion_group!(benches, cursors, gcra);
criterion_main!(benches);
