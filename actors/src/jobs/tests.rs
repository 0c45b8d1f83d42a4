//! The dispatcher's board and its backoff, without a database.

use super::*;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

fn settings() -> JobsSettings {
    JobsSettings {
        instance: "t".into(),
        queues: BTreeMap::new(),
        lease: Duration::from_secs(60),
        poll_interval: Duration::from_secs(1),
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(10),
        session_idle_limit: None,
        session_statement_limit: None,
        drain: Duration::from_secs(1),
        listen: None,
        busy: None,
    }
}

#[test]
fn a_commit_wakes_a_dispatched_queue_unless_its_next_claim_is_already_scheduled() {
    let board = JobsBoard::new(&BTreeMap::from([("email".to_owned(), 1)]));
    assert!(board.wake_needed("email"));
    assert!(!board.wake_needed("reports"), "not dispatched here");
    let armed = |on: bool| {
        let c = board.counters("email").expect("dispatched");
        c.armed.store(on, SeqCst);
    };
    armed(true);
    assert!(!board.wake_needed("email"));
    armed(false);
    assert!(board.wake_needed("email"));
}

#[test]
fn backoff_is_jittered_under_an_exponential_bound_that_stops_at_the_cap() {
    let s = settings();
    for attempt in 1..=30 {
        let bound = Duration::from_millis(100)
            .saturating_mul(1 << (attempt.min(20) - 1))
            .min(s.backoff_max);
        let delays: Vec<Duration> = (0..200).map(|_| backoff(&s, attempt)).collect();
        assert!(delays.iter().all(|d| *d <= bound), "attempt {attempt}");
        // Full jitter: the delays spread over the range rather than sitting at its top.
        assert!(delays.iter().any(|d| *d < bound / 2), "attempt {attempt}");
    }
}
