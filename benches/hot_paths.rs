//! Hot pure functions on the request path: cursor encode and decode.

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

criterion_group!(benches, cursors);
criterion_main!(benches);
