//! An adaptive concurrency limit, in the manner of Netflix's concurrency-limits `Gradient2`.
//!
//! Work is admitted while fewer than the limit are in flight. Every finished piece of work
//! reports how long it took; the limit follows the gradient between the long-term latency (an
//! exponential average) and the latest one: when latency rises above `tolerance` times its
//! long-term value, queues are forming and the limit shrinks (at most by half per sample); while
//! it stays flat the limit grows by about its square root, probing for room. With `adaptive`
//! off, the limit stays at `initial` (the fixed fallback).
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
    /// How far latency may rise over its long-term value before the limit shrinks.
    pub tolerance: f64,
    /// How much of each new estimate is taken (0.0-1.0).
    pub smoothing: f64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            adaptive: true,
            initial: 256,
            min: 16,
            max: 4096,
            tolerance: 2.0,
            smoothing: 0.2,
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

#[derive(Debug)]
struct Estimate {
    limit: f64,
    long_rtt: Option<f64>,
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
                    long_rtt: None,
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
        let s = &self.shared;
        if !s.settings.adaptive {
            return;
        }
        let Ok(mut e) = s.estimate.lock() else { return };
        let rtt = rtt.as_secs_f64().max(1e-6);
        let long = *e.long_rtt.get_or_insert(rtt);
        // The long-term latency follows slowly; after a burst it decays back quickly.
        let long = if long > rtt * 2.0 {
            long * 0.9 + rtt * 0.1
        } else {
            long * 0.99 + rtt * 0.01
        };
        e.long_rtt = Some(long);
        // A limit far above what is used says nothing about latency at that limit.
        if (inflight as f64) < e.limit / 2.0 {
            return;
        }
        let gradient = (s.settings.tolerance * long / rtt).clamp(0.5, 1.0);
        let queue = e.limit.sqrt();
        let proposed = e.limit * gradient + queue;
        let smoothing = s.settings.smoothing.clamp(0.0, 1.0);
        let next = (e.limit * (1.0 - smoothing) + proposed * smoothing)
            .clamp(s.settings.min.max(1) as f64, s.settings.max.max(1) as f64);
        e.limit = next;
        s.limit.store(next as usize, Relaxed);
    }
}

impl Permit {
    /// Frees the place and feeds the limit with how long the work took.
    pub fn finish(self, took: Duration) {
        if !self.critical {
            let inflight = self.shared.inflight.load(Relaxed);
            ConcurrencyLimit {
                shared: Arc::clone(&self.shared),
            }
            .sample(took, inflight);
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

    #[test]
    fn the_limit_shrinks_when_latency_climbs_and_grows_back_when_it_falls() {
        let l = limit(100);
        let fast = Duration::from_millis(2);
        for _ in 0..50 {
            l.sample(fast, 100);
        }
        let grown = l.limit();
        assert!(grown > 100, "flat latency probes upwards: {grown}");
        for _ in 0..30 {
            l.sample(Duration::from_millis(50), grown);
        }
        let shrunk = l.limit();
        assert!(
            shrunk < grown / 2,
            "queueing shrinks it: {grown} -> {shrunk}"
        );
        for _ in 0..200 {
            l.sample(fast, l.limit());
        }
        assert!(l.limit() > shrunk, "{} after recovery", l.limit());
    }
}
