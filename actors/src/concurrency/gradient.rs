//! The adaptive limit's arithmetic, in the manner of Gradient2: the latency samples gathered into
//! windows, the long-term average they are held against, and the limit each window proposes.

use std::time::Duration;

/// Samples judged together.
pub const WINDOW: u32 = 32;
/// A window this much slower than the long-term average shrinks the limit.
pub const TOLERANCE: f64 = 2.0;
/// Samples the long-term average spans.
const LONG_SAMPLES: f64 = 600.0;
/// The weight of one window's proposal in the limit.
const SMOOTHING: f64 = 0.2;

#[derive(Debug)]
pub(super) struct Estimate {
    limit: f64,
    long: Option<f64>,
    sum: f64,
    samples: u32,
    busiest: usize,
}

/// A window's end: its mean latency, the long-term average after it, and the most work that was
/// in flight during it.
pub(super) struct Window {
    /// Seconds.
    pub(super) short: f64,
    long: f64,
    busiest: f64,
}

impl Estimate {
    pub(super) fn new(limit: f64) -> Self {
        Self {
            limit,
            long: None,
            sum: 0.0,
            samples: 0,
            busiest: 0,
        }
    }

    /// Adds one latency sample, with `inflight` pieces of work running when it ended; at the end
    /// of a window, that window.
    pub(super) fn add(&mut self, rtt: Duration, inflight: usize) -> Option<Window> {
        self.sum += rtt.as_secs_f64();
        self.samples += 1;
        self.busiest = self.busiest.max(inflight + 1);
        if self.samples < WINDOW {
            return None;
        }
        let short = self.sum / f64::from(self.samples);
        let busiest = self.busiest as f64;
        (self.sum, self.samples, self.busiest) = (0.0, 0, 0);
        // The long-term average follows a steady queue (a closed loop of many clients) within
        // about LONG_SAMPLES samples, so only a sudden one shrinks the limit; once the queue has
        // drained (short far below long) it decays fast, so the limit recovers.
        let mut long = self.long.map_or(short, |l| {
            l + (short - l) * (f64::from(WINDOW) / LONG_SAMPLES)
        });
        if long > 2.0 * short {
            long *= 0.9;
        }
        self.long = Some(long);
        Some(Window {
            short,
            long,
            busiest,
        })
    }

    /// Moves the limit as `window` proposes, smoothed and kept within `min..=max`; the new limit.
    pub(super) fn adapt(&mut self, window: &Window, min: f64, max: f64) -> f64 {
        let limit = self.limit;
        let gradient =
            (TOLERANCE * window.long / window.short.max(f64::MIN_POSITIVE)).clamp(0.5, 1.0);
        let mut proposal = limit * gradient + limit.sqrt();
        // A limit far above the work in flight is not probed further.
        if proposal > limit && window.busiest * 2.0 < limit {
            proposal = limit;
        }
        let next = (limit * (1.0 - SMOOTHING) + proposal * SMOOTHING).clamp(min, max);
        self.limit = next;
        next
    }
}
