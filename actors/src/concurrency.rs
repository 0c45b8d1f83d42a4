//! An adaptive concurrency limit: additive increase, multiplicative decrease on a latency
//! objective, judged over windows of samples (in the manner of Netflix's concurrency-limits
//! `Gradient2` behind its windowed sampler).
//!
//! Work is admitted while fewer than the limit are in flight. Every finished piece of work
//! reports how long it took; every [`WINDOW`] samples the window's mean latency is compared with
//! the baseline: the lowest window mean seen, let drift upwards slowly. A window slower than
//! `TOLERANCE` times the baseline means queues are forming behind the limit: it shrinks by a
//! tenth. Otherwise, if the window kept at least half the limit busy, the limit grows by its
//! square root, probing for room; a limit far above the work in flight does not grow. So the
//! work in flight settles near what the dependency serves within three times its unloaded
//! latency, and what comes beyond is refused at once instead of queueing. Judging windows rather than single
//! samples keeps the variance of a database commit (an fsync) from reading as a queue. With `adaptive` off the limit
//! stays at `initial` (the fixed fallback).
//!
//! Criticality decides the order of shedding: [`Criticality::Sheddable`] work is refused first,
//! once three quarters of the limit are in flight; [`Criticality::Important`] work (a checkout)
//! only at the full limit; [`Criticality::Critical`] work (health, metrics) is never refused.
//! An external pressure flag (the memory monitor's critical state) sheds everything but critical
//! work. Admission is two atomic operations: a refusal costs well under a microsecond.

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    pub adaptive: bool,
    pub initial: usize,
    pub min: usize,
    pub max: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            adaptive: true,
            initial: 256,
            min: 8,
            max: 4096,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Criticality {
    /// Never shed (ops endpoints).
    Critical,
    /// Shed only at the full limit (checkout).
    Important,
    /// Shed first (browsing, merchant reads and writes).
    Sheddable,
}

/// Samples judged together.
pub const WINDOW: u32 = 32;
/// A window this much slower than the baseline shrinks the limit.
pub const TOLERANCE: f64 = 3.0;

#[derive(Debug)]
struct Estimate {
    limit: f64,
    baseline: Option<f64>,
    sum: f64,
    samples: u32,
    busiest: usize,
}

#[derive(Debug)]
struct Shared {
    settings: LimitSettings,
    estimate: Mutex<Estimate>,
    limit: AtomicUsize,
    inflight: AtomicUsize,
    pressure: AtomicBool,
    admitted: AtomicU64,
    shed: AtomicU64,
}

/// Shared by every HTTP worker.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit {
    shared: Arc<Shared>,
}

/// One admitted piece of work; report its latency with [`Permit::finish`] (dropping it without
/// reporting only frees its place).
#[derive(Debug)]
pub struct Permit {
    shared: Arc<Shared>,
    critical: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitSnapshot {
    pub adaptive: bool,
    pub limit: usize,
    pub inflight: usize,
    pub admitted: u64,
    pub shed: u64,
    /// Everything but critical work is shed (memory pressure).
    pub pressure: bool,
}

impl ConcurrencyLimit {
    pub fn new(settings: LimitSettings) -> Self {
        let initial = settings
            .initial
            .clamp(settings.min.max(1), settings.max.max(1));
        Self {
            shared: Arc::new(Shared {
                settings,
                estimate: Mutex::new(Estimate {
                    limit: initial as f64,
                    baseline: None,
                    sum: 0.0,
                    samples: 0,
                    busiest: 0,
                }),
                limit: AtomicUsize::new(initial),
                inflight: AtomicUsize::new(0),
                pressure: AtomicBool::new(false),
                admitted: AtomicU64::new(0),
                shed: AtomicU64::new(0),
            }),
        }
    }

    /// Admits work of this criticality now, or sheds it.
    pub fn try_acquire(&self, criticality: Criticality) -> Option<Permit> {
        let s = &self.shared;
        if criticality == Criticality::Critical {
            return Some(Permit {
                shared: Arc::clone(s),
                critical: true,
            });
        }
        let limit = s.limit.load(Relaxed);
        let room = match criticality {
            _ if s.pressure.load(Relaxed) => 0,
            Criticality::Important => limit,
            _ => (limit * 3 / 4).max(1),
        };
        let inflight = s.inflight.fetch_add(1, Relaxed);
        if inflight >= room {
            s.inflight.fetch_sub(1, Relaxed);
            s.shed.fetch_add(1, Relaxed);
            return None;
        }
        s.admitted.fetch_add(1, Relaxed);
        Some(Permit {
            shared: Arc::clone(s),
            critical: false,
        })
    }

    /// Sheds everything but critical work while `on` (the memory monitor's critical state).
    pub fn set_pressure(&self, on: bool) {
        self.shared.pressure.store(on, Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.shared.limit.load(Relaxed)
    }

    pub fn snapshot(&self) -> LimitSnapshot {
        let s = &self.shared;
        LimitSnapshot {
            adaptive: s.settings.adaptive,
            limit: s.limit.load(Relaxed),
            inflight: s.inflight.load(Relaxed),
            admitted: s.admitted.load(Relaxed),
            shed: s.shed.load(Relaxed),
            pressure: s.pressure.load(Relaxed),
        }
    }

    /// Feeds one latency sample, with `inflight` pieces of work running when it ended.
    pub fn sample(&self, rtt: Duration, inflight: usize) {
        self.shared.sample(rtt, inflight);
    }
}

impl Shared {
    /// Feeds one latency sample, with `inflight` pieces of work running when it ended. A sample
    /// that finds another being recorded is skipped: the window only needs most of them.
    fn sample(&self, rtt: Duration, inflight: usize) {
        let s = self;
        if !s.settings.adaptive {
            return;
        }
        let Ok(mut e) = s.estimate.try_lock() else {
            return;
        };
        e.sum += rtt.as_secs_f64();
        e.samples += 1;
        e.busiest = e.busiest.max(inflight + 1);
        if e.samples < WINDOW {
            return;
        }
        let mean = e.sum / f64::from(e.samples);
        let busiest = e.busiest as f64;
        (e.sum, e.samples, e.busiest) = (0.0, 0, 0);
        // The baseline is the lowest window mean, let drift up by 0.02% a window: a queue
        // cannot drag it along (a moving average would follow the queue it should reveal), and
        // a dependency slower for good becomes the new normal within minutes.
        let baseline = e.baseline.map_or(mean, |b| (b * 1.0002).min(mean));
        e.baseline = Some(baseline);
        let limit = e.limit;
        let next = if mean > TOLERANCE * baseline {
            limit * 0.9
        } else if busiest * 2.0 >= limit {
            limit + limit.sqrt()
        } else {
            return;
        };
        let next = next.clamp(s.settings.min.max(1) as f64, s.settings.max.max(1) as f64);
        e.limit = next;
        s.limit.store(next as usize, Relaxed);
    }
}

impl Permit {
    /// Frees the place and feeds the limit with how long the work took.
    pub fn finish(self, took: Duration) {
        if !self.critical {
            let inflight = self.shared.inflight.load(Relaxed);
            self.shared.sample(took, inflight);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.critical {
            self.shared.inflight.fetch_sub(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(initial: usize) -> ConcurrencyLimit {
        ConcurrencyLimit::new(LimitSettings {
            initial,
            min: 4,
            max: 1000,
            ..LimitSettings::default()
        })
    }

    #[test]
    fn browsing_is_shed_before_checkout_and_critical_work_never() {
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

    #[test]
    fn pressure_sheds_all_but_critical_work_until_lifted() {
        let l = limit(100);
        l.set_pressure(true);
        assert!(l.try_acquire(Criticality::Important).is_none());
        assert!(l.try_acquire(Criticality::Sheddable).is_none());
        assert!(l.try_acquire(Criticality::Critical).is_some());
        l.set_pressure(false);
        assert!(l.try_acquire(Criticality::Sheddable).is_some());
    }

    fn windows(l: &ConcurrencyLimit, n: u32, rtt: Duration) {
        for _ in 0..n * WINDOW {
            l.sample(rtt, l.limit());
        }
    }

    #[test]
    fn the_limit_shrinks_while_work_queues_and_grows_back_when_it_does_not() {
        let l = limit(100);
        let normal = Duration::from_millis(10);
        windows(&l, 5, normal);
        let grown = l.limit();
        assert!(grown > 100, "no queueing probes upwards: {grown}");
        windows(&l, 8, Duration::from_millis(40));
        let shrunk = l.limit();
        assert!(
            shrunk < grown / 2,
            "queueing shrinks it: {grown} -> {shrunk}"
        );
        windows(&l, 5, normal);
        assert!(l.limit() > shrunk, "{} after recovery", l.limit());
        // Far above the work in flight, it does not grow.
        let idle = l.limit();
        for _ in 0..5 * WINDOW {
            l.sample(normal, 1);
        }
        assert_eq!(l.limit(), idle);
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
}
