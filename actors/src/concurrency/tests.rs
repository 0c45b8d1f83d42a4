//! The concurrency limit: its line, its criticality and its adaptation, on paused time.

use super::*;

fn limit(initial: usize) -> ConcurrencyLimit {
    ConcurrencyLimit::new(LimitSettings {
        initial,
        min: 4,
        max: 1000,
        ..LimitSettings::default()
    })
}

fn fixed(initial: usize) -> ConcurrencyLimit {
    ConcurrencyLimit::new(LimitSettings {
        adaptive: false,
        initial,
        min: 1,
        max: 1000,
    })
}

fn windows(l: &ConcurrencyLimit, n: u32, rtt: Duration) {
    for _ in 0..n * WINDOW {
        l.sample(rtt, l.limit());
    }
}

fn far() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(30))
}

#[test]
fn without_waiting_browsing_is_shed_before_checkout_and_critical_work_never() {
    let l = limit(8);
    let browsing: Vec<_> = (0..6)
        .filter_map(|_| l.try_acquire(Criticality::Sheddable))
        .collect();
    assert_eq!(browsing.len(), 6, "three quarters of 8");
    assert!(l.try_acquire(Criticality::Sheddable).is_none());
    let checkouts: Vec<_> = (0..4)
        .filter_map(|_| l.try_acquire(Criticality::Important))
        .collect();
    assert_eq!(checkouts.len(), 2, "up to the full limit");
    assert!(l.try_acquire(Criticality::Critical).is_some());
    drop(browsing);
    assert!(l.try_acquire(Criticality::Sheddable).is_some());
    assert_eq!(l.snapshot().shed, 3);
}

#[tokio::test]
async fn pressure_refuses_all_but_critical_work_at_once_until_lifted() {
    let l = fixed(1);
    let held = l.try_acquire(Criticality::Important);
    let waiting = tokio::spawn({
        let l = l.clone();
        async move { l.acquire(Criticality::Important, far()).await.is_some() }
    });
    while l.snapshot().queued == 0 {
        tokio::task::yield_now().await;
    }
    l.set_pressure(true);
    assert!(!waiting.await.unwrap(), "those in line are refused too");
    assert_eq!(l.snapshot().queued, 0);
    drop(held);
    assert!(l.acquire(Criticality::Important, far()).await.is_none());
    assert!(l.acquire(Criticality::Sheddable, far()).await.is_none());
    assert!(l.acquire(Criticality::Critical, None).await.is_some());
    l.set_pressure(false);
    assert!(l.acquire(Criticality::Sheddable, far()).await.is_some());
}

#[tokio::test]
async fn a_closed_loop_of_many_clients_is_served_not_refused() {
    // 64 clients, each waiting for its answer, against a limit of 4: they take turns.
    let l = fixed(4);
    let clients = (0..64).map(|_| {
        let l = l.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                let deadline = Some(Instant::now() + Duration::from_secs(5));
                let permit = l.acquire(Criticality::Important, deadline).await?;
                assert!(l.snapshot().inflight <= 4, "never above the limit");
                tokio::task::yield_now().await;
                permit.finish(Duration::from_micros(200));
            }
            Some(())
        })
    });
    for client in clients.collect::<Vec<_>>() {
        assert_eq!(client.await.unwrap(), Some(()), "a client was refused");
    }
    let s = l.snapshot();
    assert_eq!((s.shed, s.inflight, s.queued), (0, 0, 0));
    assert_eq!(s.admitted, 64 * 20);
    assert!(s.waited > 0, "the limit was full at times: {s:?}");
}

// Paused time: a wait would advance the clock, so an unmoved clock proves none happened.
#[tokio::test(start_paused = true)]
async fn work_whose_expected_wait_passes_its_deadline_is_refused_at_once() {
    let l = fixed(2);
    // Work takes 100 ms here.
    windows(&l, 1, Duration::from_millis(100));
    let held: Vec<_> = (0..2)
        .filter_map(|_| l.try_acquire(Criticality::Important))
        .collect();
    // Two places free up every 100 ms: the next in 50 ms, and its work takes 100 more.
    let asked = Instant::now();
    let deadline = asked + Duration::from_millis(120);
    let refused = l.acquire(Criticality::Important, Some(deadline)).await;
    assert!(refused.is_none());
    assert_eq!(Instant::now(), asked, "refused without waiting");
    // With time enough it waits and is served once a place frees up.
    let waiting = tokio::spawn({
        let l = l.clone();
        async move { l.acquire(Criticality::Important, far()).await.is_some() }
    });
    while l.snapshot().queued == 0 {
        tokio::task::yield_now().await;
    }
    drop(held);
    assert!(waiting.await.unwrap());
    assert_eq!(l.snapshot().shed, 1);
}

#[tokio::test]
async fn a_freed_place_goes_to_a_waiting_checkout_before_waiting_browsing() {
    let l = fixed(4);
    let mut held: Vec<_> = (0..4)
        .filter_map(|_| l.try_acquire(Criticality::Important))
        .collect();
    let browse = tokio::spawn({
        let l = l.clone();
        async move { l.acquire(Criticality::Sheddable, far()).await.map(drop) }
    });
    while l.snapshot().queued < 1 {
        tokio::task::yield_now().await;
    }
    let (tx, rx) = oneshot::channel();
    let checkout = tokio::spawn({
        let l = l.clone();
        async move {
            let permit = l.acquire(Criticality::Important, far()).await;
            let _ = tx.send(());
            permit
        }
    });
    while l.snapshot().queued < 2 {
        tokio::task::yield_now().await;
    }
    held.pop();
    rx.await.unwrap();
    assert_eq!(l.snapshot().queued, 1, "browsing still waits");
    // Browsing holds at most three quarters of the limit: it waits for two more places.
    held.pop();
    assert_eq!(l.snapshot().queued, 1);
    held.pop();
    assert_eq!(browse.await.unwrap(), Some(()));
    assert!(checkout.await.unwrap().is_some());
}

#[tokio::test]
async fn a_waiter_that_gives_up_leaves_the_line_and_loses_no_place() {
    let l = fixed(1);
    let held = l.try_acquire(Criticality::Important);
    let gives_up = tokio::spawn({
        let l = l.clone();
        async move { l.acquire(Criticality::Important, far()).await.map(drop) }
    });
    while l.snapshot().queued == 0 {
        tokio::task::yield_now().await;
    }
    gives_up.abort();
    assert!(gives_up.await.is_err());
    assert_eq!(l.snapshot().queued, 0);
    drop(held);
    assert_eq!(l.snapshot().inflight, 0);
    assert!(l.acquire(Criticality::Important, far()).await.is_some());
}

#[test]
fn a_sudden_queue_shrinks_the_limit_and_a_steady_one_is_tolerated() {
    let l = limit(100);
    let normal = Duration::from_millis(10);
    windows(&l, 5, normal);
    let grown = l.limit();
    assert!(grown > 100, "no queueing probes upwards: {grown}");
    // Latency jumps fourfold: the limit shrinks at once...
    windows(&l, 3, Duration::from_millis(40));
    let shrunk = l.limit();
    assert!(
        shrunk < grown * 9 / 10,
        "a sudden queue shrinks it: {grown} -> {shrunk}"
    );
    // ...but the same latency held steadily (a closed loop's queue) stops shrinking it.
    windows(&l, 60, Duration::from_millis(40));
    let steady = l.limit();
    windows(&l, 10, Duration::from_millis(40));
    assert!(l.limit() >= steady, "{steady} -> {}", l.limit());
    assert!(steady >= 4 * 2, "not driven to the floor: {steady}");
    // Far above the work in flight, it does not grow.
    let idle = l.limit();
    for _ in 0..5 * WINDOW {
        l.sample(normal, 1);
    }
    assert!(l.limit() <= idle);
}

#[test]
fn single_slow_samples_within_a_window_do_not_shrink_it() {
    let l = limit(100);
    windows(&l, 3, Duration::from_millis(10));
    let before = l.limit();
    // One commit in eight waits for an fsync ten times as long: the window's mean holds.
    for i in 0..4 * WINDOW {
        let rtt = if i % 8 == 0 { 100 } else { 8 };
        l.sample(Duration::from_millis(rtt), l.limit());
    }
    assert!(l.limit() >= before, "{before} -> {}", l.limit());
}
