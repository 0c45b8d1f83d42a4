//! The breaker's state machine on a virtual clock, and a circuit under concurrent callers.

use super::*;

fn settings() -> BreakerSettings {
    BreakerSettings {
        failure_rate: 0.5,
        slow_call_rate: 0.8,
        slow_call: Duration::from_millis(100),
        window: 10,
        minimum_calls: 4,
        open_for: Duration::from_secs(5),
        half_open_probes: 2,
    }
}

const FAST: Duration = Duration::from_millis(1);

fn call(b: &mut Breaker, now: Instant, failed: bool, took: Duration) -> Option<Transition> {
    let (ticket, _) = b.admit(now);
    b.record(ticket.expect("admitted"), failed, took, now)
}

#[test]
fn closed_stays_closed_below_the_minimum_number_of_calls_even_if_all_fail() {
    let mut b = Breaker::new(settings());
    let t0 = Instant::now();
    for _ in 0..3 {
        assert_eq!(call(&mut b, t0, true, FAST), None);
    }
    assert_eq!(b.state(t0), CircuitState::Closed);
    let opened = call(&mut b, t0, true, FAST).expect("the fourth failure opens");
    assert_eq!(
        (opened.from, opened.to),
        (CircuitState::Closed, CircuitState::Open)
    );
}

#[test]
fn closed_opens_at_the_failure_rate_over_the_sliding_window() {
    let mut b = Breaker::new(settings());
    let t0 = Instant::now();
    // 10 successes, then failures push them out of the 10-call window one by one.
    for _ in 0..10 {
        call(&mut b, t0, false, FAST);
    }
    for i in 0..4 {
        assert_eq!(
            call(&mut b, t0, true, FAST),
            None,
            "failure {i}: 4/10 is below 50%"
        );
    }
    assert!(call(&mut b, t0, true, FAST).is_some(), "5/10 failed: opens");
    assert_eq!(b.state(t0), CircuitState::Open);
}

#[test]
fn closed_opens_at_the_slow_call_rate() {
    let mut b = Breaker::new(settings());
    let t0 = Instant::now();
    let slow = Duration::from_millis(150);
    for _ in 0..3 {
        call(&mut b, t0, false, slow);
    }
    call(&mut b, t0, false, FAST);
    assert_eq!(b.state(t0), CircuitState::Closed, "3/4 slow is below 80%");
    assert!(call(&mut b, t0, false, slow).is_some(), "4/5 slow opens");
}

#[test]
fn open_refuses_with_the_time_left_then_turns_half_open_after_the_wait() {
    let mut b = Breaker::new(settings());
    let t0 = Instant::now();
    for _ in 0..4 {
        call(&mut b, t0, true, FAST);
    }
    let (refused, _) = b.admit(t0 + Duration::from_secs(2));
    assert_eq!(refused, Err(Duration::from_secs(3)));
    let later = t0 + Duration::from_secs(5);
    assert_eq!(b.state(later), CircuitState::HalfOpen);
    let (probe, transition) = b.admit(later);
    assert!(probe.is_ok());
    assert_eq!(
        transition,
        Some(Transition {
            from: CircuitState::Open,
            to: CircuitState::HalfOpen
        })
    );
}

fn opened_then_half_open(b: &mut Breaker, t0: Instant) -> Instant {
    for _ in 0..4 {
        call(b, t0, true, FAST);
    }
    t0 + Duration::from_secs(5)
}

#[test]
fn half_open_admits_only_its_probes_and_closes_when_they_succeed() {
    let mut b = Breaker::new(settings());
    let t0 = Instant::now();
    let t = opened_then_half_open(&mut b, t0);
    let first = b.admit(t).0.expect("probe 1");
    let second = b.admit(t).0.expect("probe 2");
    assert!(b.admit(t).0.is_err(), "a third call waits for the probes");
    assert_eq!(
        b.record(first, false, FAST, t),
        None,
        "one probe is not a verdict"
    );
    let closed = b.record(second, false, FAST, t).expect("verdict");
    assert_eq!(closed.to, CircuitState::Closed);
    assert!(b.admit(t).0.is_ok());
}

#[test]
fn half_open_reopens_when_the_probes_fail_and_waits_the_full_time_again() {
    let mut b = Breaker::new(settings());
    let t0 = Instant::now();
    let t = opened_then_half_open(&mut b, t0);
    let first = b.admit(t).0.expect("probe 1");
    let second = b.admit(t).0.expect("probe 2");
    b.record(first, true, FAST, t);
    assert_eq!(
        b.record(second, false, FAST, t).map(|x| x.to),
        Some(CircuitState::Open)
    );
    assert_eq!(
        b.admit(t + Duration::from_secs(1)).0,
        Err(Duration::from_secs(4))
    );
}

#[test]
fn a_released_probe_frees_its_place_and_stale_outcomes_are_ignored() {
    let mut b = Breaker::new(settings());
    let t0 = Instant::now();
    let before = b.admit(t0).0.expect("closed-era call");
    let t = opened_then_half_open(&mut b, t0);
    let first = b.admit(t).0.expect("probe 1");
    let _second = b.admit(t).0.expect("probe 2");
    b.release(first);
    let third = b.admit(t).0.expect("the released place is free again");
    // The call admitted while closed reports a failure now: it judges nothing.
    assert_eq!(b.record(before, true, FAST, t), None);
    assert_eq!(b.record(third, false, FAST, t), None);
    assert_eq!(b.state(t), CircuitState::HalfOpen);
}

#[test]
fn circuit_counts_and_tells_its_observer_of_every_change() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let observer: Observer = Arc::new(move |name: &str, t: Transition| {
        log.lock().unwrap().push((name.to_owned(), t.to));
    });
    let circuit = Circuit::new("postgres", settings(), Some(observer));
    let t0 = Instant::now();
    for _ in 0..4 {
        circuit.try_call_at(t0).expect("closed").failed();
    }
    let refused = circuit.try_call().expect_err("open");
    assert!(refused.retry_after > Duration::from_secs(4));
    let snap = circuit.snapshot();
    assert_eq!(
        (snap.state, snap.failures, snap.refused, snap.times_opened),
        (CircuitState::Open, 4, 1, 1)
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![("postgres".to_owned(), CircuitState::Open)]
    );
    // Dropping an unreported half-open probe frees the place.
    let later = t0 + Duration::from_secs(6);
    drop(circuit.try_call_at(later).expect("probe"));
    let a = circuit.try_call_at(later).expect("probe again");
    let b = circuit.try_call_at(later).expect("second probe");
    a.succeeded();
    b.succeeded();
    assert_eq!(circuit.state(), CircuitState::Closed);
}

#[test]
fn a_thousand_concurrent_callers_against_a_half_open_circuit_send_only_its_probes() {
    let circuit = Circuit::new(
        "dependency",
        BreakerSettings {
            half_open_probes: 3,
            ..settings()
        },
        None,
    );
    let t0 = Instant::now();
    for _ in 0..4 {
        circuit.try_call_at(t0).expect("closed").failed();
    }
    // Outcomes are reported on the real clock: a second of margin past the wait.
    let later = t0 + Duration::from_secs(6);
    let reached = std::sync::atomic::AtomicU32::new(0);
    let start = std::sync::Barrier::new(1000);
    let calls: Vec<Option<Call>> = std::thread::scope(|scope| {
        let callers: Vec<_> = (0..1000)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    let call = circuit.try_call_at(later).ok()?;
                    // The dependency sees only what the circuit let through.
                    reached.fetch_add(1, Relaxed);
                    Some(call)
                })
            })
            .collect();
        callers
            .into_iter()
            .map(|c| c.join().expect("caller"))
            .collect()
    });
    assert_eq!(reached.load(Relaxed), 3);
    assert_eq!(circuit.snapshot().refused, 997);
    for call in calls.into_iter().flatten() {
        call.succeeded();
    }
    assert_eq!(circuit.state(), CircuitState::Closed);
}
