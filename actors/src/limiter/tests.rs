//! The rate limits decided in process, on a virtual clock.

use super::*;

fn limits(limit: u32, period_secs: u64, max_keys: u64) -> RateLimits {
    RateLimits::new(
        vec![LimitClass {
            name: "storefront".into(),
            limit,
            period: Duration::from_secs(period_secs),
        }],
        max_keys,
        None,
    )
}

#[test]
fn each_key_gets_its_own_burst_then_waits_for_the_rate() {
    let l = limits(3, 3, 100);
    let t0 = Instant::now();
    for key in ["10.0.0.1", "10.0.0.2"] {
        let remaining: Vec<u32> = (0..3)
            .map(|_| l.check_local(0, key, t0).unwrap().remaining)
            .collect();
        assert_eq!(remaining, vec![2, 1, 0], "{key}");
        let denied = l.check_local(0, key, t0).unwrap();
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after, Duration::from_secs(1));
    }
    assert!(
        l.check_local(0, "10.0.0.1", t0 + Duration::from_secs(1))
            .unwrap()
            .allowed
    );
}

#[test]
fn a_peek_tells_the_budget_as_it_stands_and_spends_none_of_it() {
    let l = limits(3, 3, 100);
    let t0 = Instant::now();
    let fresh = l.peek_local(0, "10.0.0.1", t0).unwrap();
    assert!(fresh.allowed);
    assert_eq!(fresh.remaining, 3);
    assert_eq!(fresh.reset_after, Duration::ZERO);
    for _ in 0..5 {
        assert_eq!(l.peek_local(0, "10.0.0.1", t0).unwrap(), fresh);
    }
    let after_one = l.check_local(0, "10.0.0.1", t0).unwrap();
    let peeked = l.peek_local(0, "10.0.0.1", t0).unwrap();
    assert!(peeked.allowed);
    assert_eq!(peeked.remaining, after_one.remaining);
    assert_eq!(peeked.reset_after, after_one.reset_after);
    l.check_local(0, "10.0.0.1", t0).unwrap();
    l.check_local(0, "10.0.0.1", t0).unwrap();
    let spent = l.peek_local(0, "10.0.0.1", t0).unwrap();
    let denied = l.check_local(0, "10.0.0.1", t0).unwrap();
    assert!(!spent.allowed && !denied.allowed);
    assert_eq!(spent.remaining, 0);
    assert_eq!(spent.retry_after, denied.retry_after);
    assert_eq!(spent.retry_after, Duration::from_secs(1));
    let later = l
        .peek_local(0, "10.0.0.1", t0 + Duration::from_secs(1))
        .unwrap();
    assert!(later.allowed);
    assert_eq!(later.remaining, 1);
}

#[test]
fn memory_stays_bounded_with_many_distinct_keys_and_idle_keys_leave() {
    let l = limits(10, 1, 1_000);
    let t0 = Instant::now();
    for i in 0..20_000u32 {
        l.check_local(0, &i.to_string(), t0);
    }
    let held = l.snapshot().classes[0].keys;
    assert!(held <= 1_000, "{held} keys held");
    // Still within their window: swept, they stay (forgetting them would grant a new burst).
    l.sweep_at(t0);
    assert_eq!(l.snapshot().classes[0].keys, held);
    l.sweep_at(t0 + Duration::from_secs(1));
    assert_eq!(l.snapshot().classes[0].keys, 0);
}
