//! `MemoryMonitor`: watches the process's memory and the lag of the arbiters, and acts on it.
//!
//! What it owns: a window of samples taken every `interval` (resident memory and CPU of the
//! process through sysinfo, the machine's available memory, and the lateness of a timer on each
//! watched arbiter: a busy or blocked thread fires its timers late), the level derived from them,
//! and the actions on a change of level.
//!
//! - Levels, with hysteresis so a value hovering at a threshold does not flap: `warning` from
//!   `soft` bytes, `critical` from `hard` bytes; back down only below 90% of the threshold.
//! - Critical: every non-critical request is shed ([`ConcurrencyLimit::set_pressure`]) and
//!   whoever can shrink (a [`Shrinker`]: the cache, wired where the tree is built) is asked to
//!   keep `shrink_to` of what it holds; back to normal, shedding stops.
//! - Trend: the least-squares slope of resident memory over the window; steady growth (a slope
//!   above `leak_bytes_per_sec` that fits the samples well) is flagged as a suspected leak.
//!
//! Messages: [`Pressure`] (a test's injected pressure source: bytes added to what is measured),
//! [`crate::Stop`]. Its figures are read without a message ([`MemoryBoard`]).

use crate::admission::{serve, CallError, Envelope, Reply, Request};
use crate::concurrency::ConcurrencyLimit;
use crate::crash::crashable;
use crate::supervision::{Resilient, Stop, Supervision};
use actix::{Actor, ActorContext, ArbiterHandle, AsyncContext, Context, Handler};
use futures_util::future::LocalBoxFuture;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct MemorySettings {
    pub interval: Duration,
    pub soft_bytes: u64,
    pub hard_bytes: u64,
    /// Samples kept for the trend.
    pub window: usize,
    pub leak_bytes_per_sec: f64,
    /// The fraction of its entries the cache keeps when memory turns critical.
    pub shrink_to: f64,
}

/// Whoever can give memory back when it turns critical: asked to keep a fraction (0.0 to 1.0) of
/// what it holds, it answers how many entries it dropped. The monitor names no other actor: the
/// cache offers one (`Handle<Cache>::shrinker`) and the tree's builder hands it over.
pub type Shrinker =
    Arc<dyn Fn(f64) -> LocalBoxFuture<'static, Result<u64, CallError>> + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryLevel {
    Normal,
    Warning,
    Critical,
}

impl MemoryLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// The level `bytes` gives, coming from `current` (hysteresis: down only below 90%).
pub fn level(current: MemoryLevel, bytes: u64, soft: u64, hard: u64) -> MemoryLevel {
    let below = |threshold: u64| (bytes as f64) < threshold as f64 * 0.9;
    match current {
        _ if bytes >= hard => MemoryLevel::Critical,
        MemoryLevel::Critical if !below(hard) => MemoryLevel::Critical,
        _ if bytes >= soft => MemoryLevel::Warning,
        MemoryLevel::Critical | MemoryLevel::Warning if !below(soft) => MemoryLevel::Warning,
        _ => MemoryLevel::Normal,
    }
}

/// The least-squares slope (per second) of `(seconds, value)` samples and how well a line fits
/// them (r², 0-1).
pub fn trend(samples: &[(f64, f64)]) -> (f64, f64) {
    let n = samples.len() as f64;
    if samples.len() < 3 {
        return (0.0, 0.0);
    }
    let (mx, my) = samples
        .iter()
        .fold((0.0, 0.0), |(x, y), (a, b)| (x + a / n, y + b / n));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in samples {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return (0.0, 0.0);
    }
    (sxy / sxx, (sxy * sxy) / (sxx * syy))
}

/// One sample, as readers see it.
#[derive(Debug, Clone, Serialize)]
pub struct MemorySnapshot {
    pub level: MemoryLevel,
    pub rss_bytes: u64,
    /// Bytes an injected pressure source adds to what is measured (tests).
    pub injected_bytes: u64,
    pub cpu_percent: f32,
    pub available_bytes: u64,
    pub soft_limit_bytes: u64,
    pub hard_limit_bytes: u64,
    /// Resident memory's slope over the window, bytes per second.
    pub trend_bytes_per_sec: f64,
    pub leak_suspected: bool,
    /// The lateness of the latest timer on each watched arbiter, milliseconds.
    pub arbiter_lag_ms: Vec<(String, f64)>,
    pub samples: u64,
}

/// The latest sample, readable without a message.
#[derive(Clone, Default)]
pub struct MemoryBoard {
    latest: Arc<Mutex<Option<MemorySnapshot>>>,
}

impl MemoryBoard {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn snapshot(&self) -> Option<MemorySnapshot> {
        self.latest.lock().ok()?.clone()
    }
}

/// Adds `bytes` to every later measurement (an injected pressure source; 0 removes it).
pub struct Pressure(pub u64);

impl Request for Pressure {
    type Reply = ();
}

struct Lag {
    name: String,
    late_us: Arc<AtomicU64>,
}

pub struct MemoryMonitor {
    settings: MemorySettings,
    limits: Vec<ConcurrencyLimit>,
    shrinker: Option<Shrinker>,
    board: MemoryBoard,
    lags: Vec<Lag>,
    /// `None` where the platform gives no figures: the monitor then measures nothing.
    system: Option<sysinfo::System>,
    window: VecDeque<(Instant, u64)>,
    level: MemoryLevel,
    injected: u64,
    samples: u64,
    started: Instant,
    supervision: Supervision,
}

impl MemoryMonitor {
    /// Publishes its samples on `board`; critical memory sheds on `limits` and asks `shrinker`
    /// to give memory back.
    pub fn new(
        settings: MemorySettings,
        board: MemoryBoard,
        limits: Vec<ConcurrencyLimit>,
        shrinker: Option<Shrinker>,
        supervision: Supervision,
    ) -> Self {
        Self {
            settings,
            limits,
            shrinker,
            board,
            lags: Vec::new(),
            system: sysinfo::System::new().ok(),
            window: VecDeque::new(),
            level: MemoryLevel::Normal,
            injected: 0,
            samples: 0,
            started: Instant::now(),
            supervision,
        }
    }

    /// Watches the timer lateness of `arbiter` under `name`.
    pub fn watch(mut self, name: &str, arbiter: &ArbiterHandle, every: Duration) -> Self {
        let late_us = Arc::new(AtomicU64::new(0));
        let store = Arc::clone(&late_us);
        arbiter.spawn(async move {
            loop {
                let due = Instant::now() + every;
                tokio::time::sleep(every).await;
                let late = Instant::now().saturating_duration_since(due);
                store.store(late.as_micros() as u64, Relaxed);
            }
        });
        self.lags.push(Lag {
            name: name.to_owned(),
            late_us,
        });
        self
    }

    fn measure(&mut self, lag_here: Duration) {
        let pid = sysinfo::get_current_pid().ok();
        let (mut rss, mut cpu, mut available) = (0, 0.0, 0);
        if let (Some(system), Some(pid)) = (self.system.as_mut(), pid) {
            system.refresh_processes_specifics(
                sysinfo::ProcessesToUpdate::Some(&[pid]),
                true,
                sysinfo::ProcessRefreshKind::nothing()
                    .with_memory()
                    .with_cpu(),
            );
            system.refresh_memory();
            if let Some(p) = system.process(pid) {
                (rss, cpu) = (p.memory(), p.cpu_usage());
            }
            available = system.available_memory();
        }
        let measured = rss + self.injected;
        let now = Instant::now();
        self.window.push_back((now, measured));
        while self.window.len() > self.settings.window.max(3) {
            self.window.pop_front();
        }
        let points: Vec<(f64, f64)> = self
            .window
            .iter()
            .map(|(t, b)| (t.duration_since(self.started).as_secs_f64(), *b as f64))
            .collect();
        let (slope, fit) = trend(&points);
        let leak = self.window.len() >= self.settings.window.max(3)
            && slope > self.settings.leak_bytes_per_sec
            && fit > 0.8;
        let next = level(
            self.level,
            measured,
            self.settings.soft_bytes,
            self.settings.hard_bytes,
        );
        if next != self.level {
            self.change(next);
        }
        self.samples += 1;
        let mut lags = vec![("memory".to_owned(), lag_here.as_secs_f64() * 1000.0)];
        lags.extend(
            self.lags
                .iter()
                .map(|l| (l.name.clone(), l.late_us.load(Relaxed) as f64 / 1000.0)),
        );
        let snapshot = MemorySnapshot {
            level: self.level,
            rss_bytes: rss,
            injected_bytes: self.injected,
            cpu_percent: cpu,
            available_bytes: available,
            soft_limit_bytes: self.settings.soft_bytes,
            hard_limit_bytes: self.settings.hard_bytes,
            trend_bytes_per_sec: slope,
            leak_suspected: leak,
            arbiter_lag_ms: lags,
            samples: self.samples,
        };
        if let Ok(mut latest) = self.board.latest.lock() {
            *latest = Some(snapshot);
        }
    }

    fn change(&mut self, next: MemoryLevel) {
        tracing::warn!(
            from = self.level.as_str(),
            to = next.as_str(),
            "memory level changed"
        );
        self.level = next;
        for limit in &self.limits {
            limit.set_pressure(next == MemoryLevel::Critical);
        }
        if next == MemoryLevel::Critical {
            if let Some(shrinker) = self.shrinker.as_ref() {
                let shrink = shrinker(self.settings.shrink_to);
                actix_rt::spawn(async move {
                    match shrink.await {
                        Ok(dropped) => tracing::warn!(dropped, "cache shrunk for memory"),
                        Err(e) => tracing::warn!(error = ?e, "cache shrink refused"),
                    }
                });
            }
        }
    }
}

impl Actor for MemoryMonitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.measure(Duration::ZERO);
        let every = self.settings.interval;
        let mut due = Instant::now() + every;
        ctx.run_interval(every, move |monitor, _| {
            let late = Instant::now().saturating_duration_since(due);
            due = Instant::now() + every;
            monitor.measure(late);
        });
    }
}

impl Resilient for MemoryMonitor {
    fn supervision(&mut self) -> &mut Supervision {
        &mut self.supervision
    }

    /// The window may have been half-updated: it starts again.
    fn rebuild(&mut self, _ctx: &mut Context<Self>) {
        self.window.clear();
    }
}

impl Handler<Envelope<Pressure>> for MemoryMonitor {
    type Result = ();

    fn handle(&mut self, envelope: Envelope<Pressure>, ctx: &mut Context<Self>) {
        serve(self, ctx, envelope, |monitor, Pressure(bytes), _| {
            monitor.injected = bytes;
            monitor.measure(Duration::ZERO);
            Reply::Ready(())
        });
    }
}

impl Handler<Stop> for MemoryMonitor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

crashable!(MemoryMonitor);

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn levels_rise_at_their_thresholds_and_fall_only_below_ninety_percent() {
        use MemoryLevel::*;
        let step = |from, mb| level(from, mb * MB, 100 * MB, 200 * MB);
        assert_eq!(step(Normal, 99), Normal);
        assert_eq!(step(Normal, 100), Warning);
        assert_eq!(step(Warning, 95), Warning, "not yet below 90");
        assert_eq!(step(Warning, 89), Normal);
        assert_eq!(step(Warning, 200), Critical);
        assert_eq!(step(Critical, 185), Critical, "not yet below 180");
        assert_eq!(step(Critical, 179), Warning);
        assert_eq!(step(Critical, 50), Normal);
    }

    #[test]
    fn steady_growth_has_a_positive_well_fitting_trend_and_noise_does_not() {
        let growing: Vec<(f64, f64)> = (0..30)
            .map(|i| (i as f64, 1000.0 + 50.0 * i as f64))
            .collect();
        let (slope, fit) = trend(&growing);
        assert!((slope - 50.0).abs() < 1e-6 && fit > 0.99, "{slope} {fit}");
        let noise: Vec<(f64, f64)> = (0..30)
            .map(|i| (i as f64, if i % 2 == 0 { 1000.0 } else { 1400.0 }))
            .collect();
        let (_, fit) = trend(&noise);
        assert!(fit < 0.1, "{fit}");
    }
}
