//! Hot functions on the request path: cursor encode and decode, one GCRA step, one rate limit
//! decision in process, a closed circuit's admit and report, a concurrency limit's admit and
//! report.

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

fn guardians(c: &mut Criterion) {
    use rampart_actors::{
        BreakerSettings, Circuit, ConcurrencyLimit, Criticality, LimitClass, LimitSettings,
        RateLimits,
    };
    use std::time::{Duration, Instant};
    let limits = RateLimits::new(
        vec![LimitClass {
            name: "storefront".into(),
            limit: 1_000_000_000,
            period: Duration::from_secs(60),
        }],
        100_000,
        None,
    );
    c.bench_function("rate limit decision (in process, one hot key)", |b| {
        b.iter(|| limits.check_local(0, black_box("203.0.113.7"), Instant::now()))
    });
    let circuit = Circuit::new("postgres", BreakerSettings::default(), None);
    c.bench_function("closed circuit: admit and report", |b| {
        b.iter(|| circuit.try_call().map(|call| call.succeeded()))
    });
    let limit = ConcurrencyLimit::new(LimitSettings::default());
    c.bench_function("concurrency limit: admit and report", |b| {
        b.iter(|| {
            if let Some(permit) = limit.try_acquire(black_box(Criticality::Sheddable)) {
                permit.finish(Duration::from_micros(300));
            }
        })
    });
}

criterion_group!(benches, cursors, gcra, guardians);
criterion_main!(benches);
