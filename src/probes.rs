//! The dependencies' state, sampled in the background for readiness, metrics and ops stats.
//!
//! Every `health.refresh_ms` one task pings PostgreSQL and reads the job queues on `DbProbe`'s
//! own connection, and pings Redis; the outcome replaces the shared [`Sampled`] snapshot, which
//! `/health/ready`, `/metrics` and `/api/v1/ops/stats` read without a message. So any number of
//! concurrent probes and scrapes costs no database or Redis command: before, each probe queued a
//! ping and a job-table query on the probe's mailbox of 16, and 200 concurrent probes got 503s.
//! The first sample is taken before the port opens ([`Sampled::first`]), so the very first
//! probe already answers from a real check. What actors publish themselves (circuits, memory,
//! mailboxes, limits) is read as it is, since reading it costs nothing either.
//!
//! The task runs on the main arbiter and is aborted when the HTTP server stops, before the
//! actors it calls are stopped ([`Sampler`]).

use crate::settings::Settings;
use rampart_actors::{DbError, DbProbe, Handle, QueueHealth, SharedTier};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// One sample of the dependencies.
#[derive(Debug, Clone)]
pub struct Sample {
    /// PostgreSQL's round trip, or a reason fit for an unauthenticated reader.
    pub postgres: Result<Duration, &'static str>,
    /// Whether Redis answered (`None`: no `redis.url`).
    pub redis: Option<bool>,
    /// Every queue of the job kinds across every instance (`None`: PostgreSQL did not answer
    /// in time; its own check says so).
    pub queues: Option<Vec<QueueHealth>>,
    /// When the sample was taken.
    pub at: Instant,
    /// The driver's message of a failed PostgreSQL check, for the log only.
    detail: Option<String>,
}

impl Sample {
    /// How old the sample is, in milliseconds.
    pub fn age_ms(&self) -> u64 {
        u64::try_from(self.at.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the sample is older at `now` than `limit` ([`stale_after`]): the sampler stopped
    /// or stalled, and the sample says nothing of now.
    pub fn is_stale_at(&self, now: Instant, limit: Duration) -> bool {
        now.saturating_duration_since(self.at) > limit
    }
}

/// How old a sample may be while the sampler is working: one period (`health.refresh_ms`) plus
/// the longest a sample takes, PostgreSQL's ping then its queue read (each within
/// `health.ready_timeout_ms`) or, alongside, Redis's connection and ping (each within
/// `redis.command_timeout_ms`). Older, readiness takes the sampler for dead and answers unready
/// rather than repeat the last sample forever.
pub fn stale_after(settings: &Settings) -> Duration {
    let postgres = Settings::ms(settings.health.ready_timeout_ms) * 2;
    let redis = if settings.redis.url.is_some() {
        Settings::ms(settings.redis.command_timeout_ms) * 2
    } else {
        Duration::ZERO
    };
    Settings::ms(settings.health.refresh_ms) + postgres.max(redis)
}

/// The latest sample, shared by every HTTP worker and replaced by the sampler.
#[derive(Clone)]
pub struct Sampled(Arc<RwLock<Arc<Sample>>>);

impl Sampled {
    /// Takes the first sample now (before the port opens) and returns the snapshot it starts.
    pub async fn first(checks: &Checks) -> Self {
        let sample = checks.sample().await;
        if let Err(reason) = &sample.postgres {
            let error = sample.detail.as_deref();
            tracing::warn!(reason, error, "readiness: PostgreSQL check failed");
        }
        Self(Arc::new(RwLock::new(Arc::new(sample))))
    }

    /// The latest sample.
    pub fn get(&self) -> Arc<Sample> {
        match self.0.read() {
            Ok(held) => Arc::clone(&held),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn set(&self, sample: Sample) {
        let sample = Arc::new(sample);
        match self.0.write() {
            Ok(mut held) => *held = sample,
            Err(poisoned) => *poisoned.into_inner() = sample,
        }
    }

    /// Starts the background task that refreshes the sample every `every`. It runs until the
    /// returned [`Sampler`] is stopped (or dropped with its runtime).
    pub fn refresh(&self, checks: Checks, every: Duration) -> Sampler {
        let sampled = self.clone();
        let task = actix_web::rt::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            // A slow sample (PostgreSQL not answering) delays the next instead of bunching them.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let was_up = sampled.get().postgres.is_ok();
                let sample = checks.sample().await;
                match (&sample.postgres, was_up) {
                    (Err(reason), true) => tracing::warn!(
                        reason,
                        error = sample.detail.as_deref(),
                        "readiness: PostgreSQL check failed"
                    ),
                    (Ok(_), false) => tracing::info!("readiness: PostgreSQL answers again"),
                    _ => {}
                }
                sampled.set(sample);
            }
        });
        Sampler(task)
    }
}

/// The sampling task; [`Sampler::stop`] ends it.
pub struct Sampler(actix_web::rt::task::JoinHandle<()>);

impl Sampler {
    pub fn stop(&self) {
        self.0.abort();
    }
}

/// What one sample asks, and of whom.
#[derive(Clone)]
pub struct Checks {
    pub probe: Handle<DbProbe>,
    pub redis: Option<SharedTier>,
    /// Each check's time limit (`health.ready_timeout_ms`).
    pub within: Duration,
}

impl Checks {
    pub fn new(probe: Handle<DbProbe>, redis: Option<SharedTier>, settings: &Settings) -> Self {
        Self {
            probe,
            redis,
            within: Settings::ms(settings.health.ready_timeout_ms),
        }
    }

    /// PostgreSQL (then, if it answered, the job queues) and Redis, side by side.
    pub async fn sample(&self) -> Sample {
        let postgres = async {
            let rtt = self.probe.ping(self.within).await;
            let queues = match rtt {
                Ok(_) => self.queues().await,
                Err(_) => None,
            };
            let detail = rtt.as_ref().err().map(ToString::to_string);
            (rtt.map_err(|e| short_reason(&e)), queues, detail)
        };
        let redis = async {
            match &self.redis {
                Some(shared) => Some(shared.ping().await),
                None => None,
            }
        };
        let ((postgres, queues, detail), redis) = futures_util::join!(postgres, redis);
        Sample {
            postgres,
            redis,
            queues,
            at: Instant::now(),
            detail,
        }
    }

    /// Every queue of the job kinds, an idle one with zeros: a series that vanished while its
    /// queue was empty would leave gaps in the graphs and alerts with nothing to compare.
    async fn queues(&self) -> Option<Vec<QueueHealth>> {
        let mut queues = self.probe.queues(self.within).await.ok()?;
        for kind in crate::jobs::kinds::KINDS {
            if !queues.iter().any(|q| q.queue == kind.queue) {
                queues.push(QueueHealth {
                    queue: kind.queue.to_owned(),
                    ..QueueHealth::default()
                });
            }
        }
        queues.sort_by(|a, b| a.queue.cmp(&b.queue));
        Some(queues)
    }
}

/// A reason fit for an unauthenticated reader: the kind of failure, not the driver's message
/// (that is logged).
fn short_reason(e: &DbError) -> &'static str {
    match e {
        DbError::Timeout => "no answer within the readiness deadline",
        DbError::Overloaded => "probe busy",
        DbError::Unavailable(_) => "unreachable",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Secret;

    fn sample_at(at: Instant) -> Sample {
        Sample {
            postgres: Ok(Duration::from_millis(1)),
            redis: None,
            queues: None,
            at,
            detail: None,
        }
    }

    fn settings(refresh_ms: u64, ready_timeout_ms: u64) -> Settings {
        let mut s = Settings::defaults().unwrap();
        s.health.refresh_ms = refresh_ms;
        s.health.ready_timeout_ms = ready_timeout_ms;
        s.redis.url = None;
        s
    }

    #[test]
    fn a_sample_is_stale_past_a_period_and_the_longest_a_sample_takes() {
        let s = settings(500, 1000);
        assert_eq!(stale_after(&s), Duration::from_millis(2500));
        // Redis's connection and ping, each within its command timeout, count when longer.
        let mut slow_redis = settings(500, 100);
        slow_redis.redis.url = Some(Secret::new("redis://127.0.0.1:1"));
        slow_redis.redis.command_timeout_ms = 400;
        assert_eq!(stale_after(&slow_redis), Duration::from_millis(1300));
        slow_redis.redis.command_timeout_ms = 50;
        assert_eq!(stale_after(&slow_redis), Duration::from_millis(700));
    }

    #[test]
    fn readiness_stops_trusting_a_sample_the_sampler_did_not_replace() {
        let limit = stale_after(&settings(500, 1000));
        let t0 = Instant::now();
        let sample = sample_at(t0);
        // A sampler that works replaces the sample within the limit.
        assert!(!sample.is_stale_at(t0, limit));
        assert!(!sample.is_stale_at(t0 + Duration::from_millis(600), limit));
        assert!(!sample.is_stale_at(t0 + limit, limit));
        // One that died or stalls leaves it older: stale, however good it was.
        assert!(sample.is_stale_at(t0 + limit + Duration::from_millis(1), limit));
        assert!(sample.is_stale_at(t0 + Duration::from_secs(3600), limit));
        // A sample taken after `now` (a clock read before it) is not stale.
        assert!(!sample_at(t0 + Duration::from_secs(1)).is_stale_at(t0, limit));
    }
}
