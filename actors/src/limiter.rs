//! `Limiter`: owns the rate limits, GCRA per class and key, in process or in Redis.
//!
//! What it owns: the classes (each a [`Gcra`] and a bounded in-process table of theoretical
//! arrival times), the Redis script when `redis.url` is set, and the counters.
//!
//! The decision bypasses the mailbox, as the cache's hits do, by measurement: one decision on
//! the caller's thread costs well under a microsecond (one GCRA step, 22 ns, and one
//! [`KeyTable`] lookup), the same decision asked of the actor across threads 21 µs (`cargo bench -p
//! rampart-actors --bench admission`), on every limited request. So callers decide through
//! [`RateLimits`], the shared state the actor owns, and the actor does what is not per request:
//! it sweeps the tables on an interval so idle keys leave even when no request touches them, and
//! stops.
//!
//! - In process: a key whose window is empty again is forgotten by the sweep (its state allows
//!   a full burst, as a new key's does, so no decision changes), and each table holds at most
//!   `max_keys` keys, idle ones out first, so memory stays bounded however many distinct
//!   clients come. A key pushed out early gets a fresh burst: the price of the bound.
//! - With Redis: one atomic Lua script per decision, on Redis's clock (instances' clocks may
//!   differ), so the limits hold across every instance together. A decision may grant up to a
//!   lease of requests ahead ([`lease_size`]: a hundredth of the limit, 1 to 64), spent by this
//!   instance without asking Redis again within a second (what is left then is dropped); when
//!   half of it is spent, one background request tops it up, so the requests of a busy key
//!   neither wait for Redis nor all ask it at once: one round trip per lease, not per request.
//!   Leased requests are counted in Redis when granted, so nothing is admitted uncounted; what a
//!   lease can do is move a few requests later in time: over any window the instances together
//!   admit at most the limit plus two leases per instance and key (limits under 200 lease
//!   nothing: exact). Redis down, hung or behind an open circuit: the decision is taken in
//!   process at once (never unlimited) and counted as a fallback.

use crate::crash::crashable;
use crate::gcra::{Decision, Gcra};
use crate::key_table::KeyTable;
use crate::redis_link::RedisLink;
use crate::supervision::{Resilient, Stop, Supervision};
use actix::{Actor, ActorContext, AsyncContext, Context, Handler};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod in_redis;
#[cfg(test)]
mod tests;

/// One class of limits: `limit` requests per `period` per key.
#[derive(Debug, Clone)]
pub struct LimitClass {
    pub name: String,
    pub limit: u32,
    pub period: Duration,
}

/// One decision, with what the response headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Until the key's window is empty again.
    pub reset_after: Duration,
    /// Until a request would be allowed (zero when allowed).
    pub retry_after: Duration,
}

#[derive(Debug, Default)]
struct ClassCounts {
    allowed: AtomicU64,
    denied: AtomicU64,
}

struct Class {
    spec: LimitClass,
    gcra: Gcra,
    /// Theoretical arrival time per key (nanoseconds from the limiter's origin; 0: now).
    table: KeyTable<AtomicU64>,
    /// With Redis: requests granted by Redis ahead, per key, spent here.
    leases: KeyTable<Lease>,
    /// How many requests one Redis decision may grant ahead (see the module's header).
    lease: u32,
    counts: ClassCounts,
}

/// Requests Redis granted ahead to this instance for one key.
#[derive(Debug)]
struct Lease {
    left: AtomicU32,
    /// Nanoseconds from the limiter's origin.
    until: AtomicU64,
    /// A top-up is on its way from Redis.
    refilling: AtomicBool,
}

/// How long leased requests may wait to be spent.
const LEASE_VALID: Duration = Duration::from_secs(1);

/// The requests one Redis decision may grant ahead: a hundredth of the limit, 1 to 64.
pub fn lease_size(limit: u32) -> u32 {
    (limit / 100).clamp(1, 64)
}

#[derive(Debug, Default)]
struct Counts {
    shared: AtomicU64,
    fallbacks: AtomicU64,
}

struct Inner {
    classes: Vec<Class>,
    origin: Instant,
    shared: Option<(RedisLink, redis::Script)>,
    counts: Counts,
}

/// The decisions' side of the limiter: cheap to clone, used on the caller's thread.
#[derive(Clone)]
pub struct RateLimits {
    inner: Arc<Inner>,
}

/// Figures of one class.
#[derive(Debug, Clone, Serialize)]
pub struct ClassSnapshot {
    pub name: String,
    pub limit: u32,
    pub period_secs: u64,
    pub allowed: u64,
    pub denied: u64,
    /// Keys held in process.
    pub keys: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LimiterSnapshot {
    /// Where decisions are taken: "redis" or "local".
    pub mode: &'static str,
    pub classes: Vec<ClassSnapshot>,
    /// Decisions taken in Redis.
    pub shared_decisions: u64,
    /// Decisions taken in process because Redis did not answer.
    pub fallbacks: u64,
}

/// A key's budget when its TAT runs `ahead` nanoseconds ahead of now: what a request now would
/// be told, without the request.
fn standing(gcra: &Gcra, ahead: u64) -> Verdict {
    let interval = (gcra.interval().as_nanos() as u64).max(1);
    let tolerance = gcra.tolerance().as_nanos() as u64;
    let limit = gcra.limit();
    let used = ahead.div_ceil(interval).min(u64::from(limit)) as u32;
    let allowed = ahead <= tolerance;
    Verdict {
        allowed,
        limit,
        remaining: if allowed { limit - used } else { 0 },
        reset_after: Duration::from_nanos(ahead),
        retry_after: Duration::from_nanos(ahead.saturating_sub(tolerance)),
    }
}

impl RateLimits {
    /// `shared`: decide in Redis through this link (keys prefixed with `prefix`).
    pub fn new(classes: Vec<LimitClass>, max_keys: u64, shared: Option<RedisLink>) -> Self {
        let classes = classes
            .into_iter()
            .map(|spec| Class {
                gcra: Gcra::new(spec.limit, spec.period),
                table: KeyTable::new(max_keys),
                leases: KeyTable::new(max_keys),
                lease: lease_size(spec.limit),
                counts: ClassCounts::default(),
                spec,
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                classes,
                origin: Instant::now(),
                shared: shared.map(|link| (link, in_redis::script())),
                counts: Counts::default(),
            }),
        }
    }

    /// The index of the class named `name`.
    pub fn class(&self, name: &str) -> Option<usize> {
        self.inner.classes.iter().position(|c| c.spec.name == name)
    }

    /// Decides one request of `key` in class `class` (an index from [`RateLimits::class`]).
    pub async fn check(&self, class: usize, key: &str) -> Verdict {
        let Some(c) = self.inner.classes.get(class) else {
            return Verdict {
                allowed: true,
                limit: 0,
                remaining: 0,
                reset_after: Duration::ZERO,
                retry_after: Duration::ZERO,
            };
        };
        let verdict = match &self.inner.shared {
            Some((link, script)) => {
                // A leased request is decided here without awaiting anything; only asking
                // Redis is a future, and a boxed one, so this future stays small: each layer
                // of the edge holding it moves (copies) it, 2.8 kB per request unboxed.
                let decided = match self.spend_lease(class, c, key) {
                    Some(v) => Some(v),
                    None => Box::pin(self.ask(link, script, c, key)).await,
                };
                match decided {
                    Some(v) => {
                        self.inner.counts.shared.fetch_add(1, Relaxed);
                        v
                    }
                    None => {
                        self.inner.counts.fallbacks.fetch_add(1, Relaxed);
                        self.check_local_at(c, key, Instant::now())
                    }
                }
            }
            None => self.check_local_at(c, key, Instant::now()),
        };
        let counter = if verdict.allowed {
            &c.counts.allowed
        } else {
            &c.counts.denied
        };
        counter.fetch_add(1, Relaxed);
        verdict
    }

    /// What a request of `key` in class `class` would be told now, without counting it: the
    /// key's budget as it stands. In process that is exact; with Redis it is asked of Redis (one
    /// script call, nothing written), in process when Redis does not answer. A refusal (not
    /// `allowed`) is counted as a denied decision of the class: the caller refuses the request
    /// on it. (The edge asks this before it spends work that the class would only count
    /// afterwards, such as a failed credential check.)
    pub async fn peek(&self, class: usize, key: &str) -> Option<Verdict> {
        let c = self.inner.classes.get(class)?;
        let ahead = match &self.inner.shared {
            Some((link, _)) => match Box::pin(in_redis::ahead(link, &c.spec.name, key)).await {
                Some(ahead) => ahead,
                None => self.ahead_local(c, key, Instant::now()),
            },
            None => self.ahead_local(c, key, Instant::now()),
        };
        let verdict = standing(&c.gcra, ahead);
        if !verdict.allowed {
            c.counts.denied.fetch_add(1, Relaxed);
        }
        Some(verdict)
    }

    /// [`RateLimits::peek`] in process at `now` (tests drive it on a virtual clock); counts
    /// nothing.
    pub fn peek_local(&self, class: usize, key: &str, now: Instant) -> Option<Verdict> {
        let c = self.inner.classes.get(class)?;
        Some(standing(&c.gcra, self.ahead_local(c, key, now)))
    }

    /// How far the key's theoretical arrival time runs ahead of `now`, in process.
    fn ahead_local(&self, c: &Class, key: &str, now: Instant) -> u64 {
        let now = self.nanos(now);
        c.table
            .get(key, |tat| tat.load(Relaxed))
            .map_or(0, |tat| tat.saturating_sub(now))
    }

    /// The in-process decision at `now` (tests drive it on a virtual clock).
    pub fn check_local(&self, class: usize, key: &str, now: Instant) -> Option<Verdict> {
        let c = self.inner.classes.get(class)?;
        Some(self.check_local_at(c, key, now))
    }

    fn check_local_at(&self, c: &Class, key: &str, now: Instant) -> Verdict {
        let now = self.nanos(now);
        // A key's TAT is an atomic (0: never seen, which GCRA reads as "now"): a decision is a
        // shard's read lock and a compare-and-swap, allocating only for a new key.
        let decision = c.table.with(
            key,
            || AtomicU64::new(0),
            |tat| tat.load(Relaxed) <= now,
            |tat| loop {
                let seen = tat.load(Relaxed);
                match c.gcra.check(Some(seen), now) {
                    allow @ Decision::Allow { tat: next, .. } => {
                        if tat
                            .compare_exchange_weak(seen, next, Relaxed, Relaxed)
                            .is_ok()
                        {
                            break allow;
                        }
                    }
                    deny => break deny,
                }
            },
        );
        let limit = c.gcra.limit();
        match decision {
            Decision::Allow {
                remaining,
                reset_after,
                ..
            } => Verdict {
                allowed: true,
                limit,
                remaining,
                reset_after,
                retry_after: Duration::ZERO,
            },
            Decision::Deny {
                retry_after,
                reset_after,
            } => Verdict {
                allowed: false,
                limit,
                remaining: 0,
                reset_after,
                retry_after,
            },
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.inner.origin).as_nanos() as u64
    }

    /// Keeps `extra` granted requests for this instance to spend within [`LEASE_VALID`].
    fn keep(&self, c: &Class, key: &str, extra: u32, now: Instant) {
        let until = self.nanos(now + LEASE_VALID.min(c.spec.period));
        let now = self.nanos(now);
        let add = |lease: &Lease| {
            // What a lease past its validity still held was granted over a second ago: dropped,
            // not revived by this grant.
            if lease.until.swap(until, Relaxed) <= now {
                lease.left.store(extra, Relaxed);
            } else {
                lease.left.fetch_add(extra, Relaxed);
            }
        };
        if extra == 0 {
            c.leases.get(key, add);
            return;
        }
        c.leases.with(
            key,
            || Lease {
                left: AtomicU32::new(0),
                until: AtomicU64::new(until),
                refilling: AtomicBool::new(false),
            },
            |lease| lease.until.load(Relaxed) <= now,
            add,
        );
    }

    /// Tops up a lease in the background, so the requests of a busy key do not wait for Redis
    /// when it runs out, nor all ask Redis at once.
    fn refill(&self, class: usize, key: &str) {
        let (this, key) = (self.clone(), key.to_owned());
        actix_rt::spawn(async move {
            let (Some(c), Some((link, script))) =
                (this.inner.classes.get(class), this.inner.shared.as_ref())
            else {
                return;
            };
            if let Some([granted, ..]) =
                in_redis::grant(link, script, &c.spec.name, &c.gcra, &key, c.lease).await
            {
                this.keep(c, &key, u32::try_from(granted).unwrap_or(0), Instant::now());
            }
            c.leases
                .get(&key, |lease| lease.refilling.store(false, Relaxed));
        });
    }

    /// Spends one request of this instance's lease of `key`, if it holds one.
    fn spend_lease(&self, class: usize, c: &Class, key: &str) -> Option<Verdict> {
        let now = self.nanos(Instant::now());
        let (left, refill) = c.leases.get(key, |lease| {
            if now >= lease.until.load(Relaxed) {
                return None;
            }
            let before = lease
                .left
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                .ok()?;
            let left = before - 1;
            Some((
                left,
                left < c.lease / 2 && !lease.refilling.swap(true, Relaxed),
            ))
        })??;
        if refill {
            self.refill(class, key);
        }
        let limit = c.spec.limit.max(1);
        Some(Verdict {
            allowed: true,
            limit,
            remaining: left,
            reset_after: c.spec.period / limit,
            retry_after: Duration::ZERO,
        })
    }

    /// Decides in Redis, taking a lease of the requests that follow. `None`: Redis did not
    /// answer.
    async fn ask(
        &self,
        link: &RedisLink,
        script: &redis::Script,
        c: &Class,
        key: &str,
    ) -> Option<Verdict> {
        let now = Instant::now();
        let [granted, remaining, retry_us, reset_us] =
            in_redis::grant(link, script, &c.spec.name, &c.gcra, key, c.lease).await?;
        let granted = u32::try_from(granted).unwrap_or(0);
        // Each granted request was counted in Redis: what is not used now is kept for the next
        // requests of this key, and dropped after a second.
        self.keep(c, key, granted.saturating_sub(1), now);
        let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Some(Verdict {
            allowed: granted > 0,
            limit: c.spec.limit.max(1),
            remaining: u32::try_from(remaining).unwrap_or(0) + granted.saturating_sub(1),
            reset_after: micros(reset_us),
            retry_after: micros(retry_us),
        })
    }

    /// Drops the keys that went idle: a key whose window is empty again (it would get a full
    /// burst as a new key does) and a lease past its validity. No decision changes.
    pub fn sweep(&self) {
        self.sweep_at(Instant::now());
    }

    /// [`RateLimits::sweep`] at `now` (tests drive it on a virtual clock).
    pub fn sweep_at(&self, now: Instant) {
        let now = self.nanos(now);
        for c in &self.inner.classes {
            c.table.sweep(|tat| tat.load(Relaxed) <= now);
            c.leases.sweep(|lease| lease.until.load(Relaxed) <= now);
        }
    }

    pub fn snapshot(&self) -> LimiterSnapshot {
        LimiterSnapshot {
            mode: if self.inner.shared.is_some() {
                "redis"
            } else {
                "local"
            },
            classes: self
                .inner
                .classes
                .iter()
                .map(|c| ClassSnapshot {
                    name: c.spec.name.clone(),
                    limit: c.spec.limit,
                    period_secs: c.spec.period.as_secs(),
                    allowed: c.counts.allowed.load(Relaxed),
                    denied: c.counts.denied.load(Relaxed),
                    keys: c.table.len(),
                })
                .collect(),
            shared_decisions: self.inner.counts.shared.load(Relaxed),
            fallbacks: self.inner.counts.fallbacks.load(Relaxed),
        }
    }
}

pub struct Limiter {
    limits: RateLimits,
    sweep_every: Duration,
    supervision: Supervision,
}

impl Limiter {
    pub fn new(limits: RateLimits, sweep_every: Duration, supervision: Supervision) -> Self {
        Self {
            limits,
            sweep_every,
            supervision,
        }
    }
}

impl Actor for Limiter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.sweep_every, |limiter, _| limiter.limits.sweep());
    }
}

impl Resilient for Limiter {
    fn supervision(&mut self) -> &mut Supervision {
        &mut self.supervision
    }

    /// Nothing to rebuild: the tables hold atomics, consistent under any panic of ours.
    fn rebuild(&mut self, _ctx: &mut Context<Self>) {}
}

impl Handler<Stop> for Limiter {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

crashable!(Limiter);
