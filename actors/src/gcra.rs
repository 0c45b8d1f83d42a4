//! GCRA, the generic cell rate algorithm: `limit` requests per `period`, with bursts up to
//! `limit`. One step decides a request from the stored theoretical arrival time (TAT) and gives
//! the new one. It is pure (times are nanoseconds from any fixed origin), so the rate limiter can
//! keep TATs in process or in Redis, and tests drive it on a virtual clock.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    limit: u32,
    /// The emission interval: period / limit.
    interval: u64,
    /// How far ahead of now the TAT may run: interval × (limit − 1).
    tolerance: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Store `tat`; `remaining` requests could follow at once; the window is empty again after
    /// `reset_after`.
    Allow {
        tat: u64,
        remaining: u32,
        reset_after: Duration,
    },
    /// Store nothing; a request is allowed again after `retry_after`.
    Deny {
        retry_after: Duration,
        reset_after: Duration,
    },
}

impl Gcra {
    pub fn new(limit: u32, period: Duration) -> Self {
        let limit = limit.max(1);
        let interval = (period.as_nanos() / u128::from(limit)).max(1) as u64;
        Self {
            limit,
            interval,
            tolerance: interval * u64::from(limit - 1),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The time one request stands for: period / limit.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval)
    }

    /// How far ahead of now the TAT may run: the burst beyond the first request.
    pub fn tolerance(&self) -> Duration {
        Duration::from_nanos(self.tolerance)
    }

    /// Decides one request at `now` against the stored `tat` (`None`: never seen).
    pub fn check(&self, tat: Option<u64>, now: u64) -> Decision {
        let tat = tat.unwrap_or(now).max(now);
        let allowed_from = tat.saturating_sub(self.tolerance);
        if now < allowed_from {
            return Decision::Deny {
                retry_after: Duration::from_nanos(allowed_from - now),
                reset_after: Duration::from_nanos(tat - now),
            };
        }
        let new_tat = tat + self.interval;
        let used = (new_tat - now).div_ceil(self.interval);
        Decision::Allow {
            tat: new_tat,
            remaining: self
                .limit
                .saturating_sub(used.min(u64::from(self.limit)) as u32),
            reset_after: Duration::from_nanos(new_tat - now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    /// Runs requests at the given times, keeping the TAT as a limiter would.
    fn replay(gcra: &Gcra, times: &[u64]) -> Vec<bool> {
        let mut tat = None;
        times
            .iter()
            .map(|&now| match gcra.check(tat, now) {
                Decision::Allow { tat: t, .. } => {
                    tat = Some(t);
                    true
                }
                Decision::Deny { .. } => false,
            })
            .collect()
    }

    #[test]
    fn a_burst_gets_exactly_the_limit_then_one_per_interval() {
        let gcra = Gcra::new(5, Duration::from_secs(10));
        let burst = replay(&gcra, &[0; 7]);
        assert_eq!(burst, [true, true, true, true, true, false, false]);
        match gcra.check(Some(5 * 2 * SEC), 0) {
            Decision::Deny {
                retry_after,
                reset_after,
            } => {
                assert_eq!(retry_after, Duration::from_secs(2));
                assert_eq!(reset_after, Duration::from_secs(10));
            }
            other => panic!("{other:?}"),
        }
        // One interval later exactly one more fits.
        let later = replay(&gcra, &[0, 0, 0, 0, 0, 2 * SEC, 2 * SEC]);
        assert_eq!(later[5..], [true, false]);
    }

    #[test]
    fn remaining_counts_down_and_recovers_with_time() {
        let gcra = Gcra::new(3, Duration::from_secs(3));
        let Decision::Allow { tat, remaining, .. } = gcra.check(None, 0) else {
            panic!()
        };
        assert_eq!(remaining, 2);
        let Decision::Allow { tat, remaining, .. } = gcra.check(Some(tat), 0) else {
            panic!()
        };
        assert_eq!(remaining, 1);
        let Decision::Allow {
            remaining,
            reset_after,
            ..
        } = gcra.check(Some(tat), 10 * SEC)
        else {
            panic!()
        };
        assert_eq!(remaining, 2, "a quiet period empties the window");
        assert_eq!(reset_after, Duration::from_secs(1));
    }

    #[test]
    fn no_span_admits_more_than_the_burst_plus_the_rate() {
        // GCRA's guarantee, checked on a pseudo-random arrival pattern: n requests admitted
        // within a span W need W >= (n - limit) x interval.
        let gcra = Gcra::new(10, Duration::from_secs(1));
        let interval = SEC / 10;
        let mut x: u64 = 42;
        let mut now = 0;
        let mut times = Vec::new();
        for _ in 0..3000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            now += (x >> 33) % (SEC / 8);
            times.push(now);
        }
        let allowed: Vec<u64> = times
            .iter()
            .zip(replay(&gcra, &times))
            .filter(|(_, ok)| *ok)
            .map(|(t, _)| *t)
            .collect();
        for i in 0..allowed.len() {
            for j in i..allowed.len().min(i + 40) {
                let n = (j - i + 1) as u64;
                let span = allowed[j] - allowed[i];
                assert!(
                    n <= 10 || span >= (n - 10) * interval,
                    "{n} admitted within {span} ns"
                );
            }
        }
        // And it does not starve: over the whole run close to the rate gets through.
        let rate = allowed.len() as f64 / (now as f64 / SEC as f64);
        assert!(rate > 7.0 && rate <= 10.5, "sustained {rate}/s");
    }

    /// The reference: a token bucket of `limit` tokens (counted in nanoseconds of refill), one
    /// token per request, refilled continuously at `limit` per `period`.
    struct Bucket {
        capacity: u64,
        cost: u64,
        level: u64,
        at: u64,
    }

    impl Bucket {
        fn new(limit: u32, period: Duration) -> Self {
            let cost = (period.as_nanos() / u128::from(limit)) as u64;
            Self {
                capacity: cost * u64::from(limit),
                cost,
                level: cost * u64::from(limit),
                at: 0,
            }
        }
        fn take(&mut self, now: u64) -> bool {
            self.level = (self.level + (now - self.at)).min(self.capacity);
            self.at = now;
            if self.level >= self.cost {
                self.level -= self.cost;
                true
            } else {
                false
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn gcra_decides_every_request_as_a_token_bucket_does(
            limit in 1u32..50,
            period_ms in 1u64..10_000,
            gaps in proptest::collection::vec(0u64..2_000_000_000, 1..300),
        ) {
            let period = Duration::from_millis(period_ms);
            let gcra = Gcra::new(limit, period);
            let mut bucket = Bucket::new(limit, period);
            let mut tat = None;
            let mut now = 0;
            for gap in gaps {
                now += gap % (period_ms * 1_000_000 / u64::from(limit) * 3 + 1);
                let allowed = match gcra.check(tat, now) {
                    Decision::Allow { tat: t, remaining, .. } => {
                        tat = Some(t);
                        proptest::prop_assert!(remaining < limit);
                        true
                    }
                    Decision::Deny { retry_after, .. } => {
                        // Waiting as told is enough, and not a nanosecond less would be.
                        let at = now + retry_after.as_nanos() as u64;
                        let allowed_then = matches!(gcra.check(tat, at), Decision::Allow { .. });
                        proptest::prop_assert!(allowed_then);
                        if retry_after.as_nanos() > 0 {
                            let denied_before = matches!(gcra.check(tat, at - 1), Decision::Deny { .. });
                            proptest::prop_assert!(denied_before);
                        }
                        false
                    }
                };
                proptest::prop_assert_eq!(allowed, bucket.take(now), "at {} ns", now);
            }
        }
    }
}
