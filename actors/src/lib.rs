//! Supervised resource owners for actix services.
//!
//! actix gives actors and mailboxes, but two things a service under load needs are missing:
//! `Addr::send` queues past a full mailbox, and a panic in a handler kills the actor for good.
//! This crate adds what is missing, and nothing about HTTP or any business domain:
//!
//! - [`admission`]: request-path calls admitted with `try_send` on one shared address, refused at
//!   once with [`CallError::Overloaded`] when the mailbox is full, awaited against a deadline.
//! - [`supervision`]: a panic at the message boundary becomes a restart that rebuilds the owned
//!   resource, limited by an OTP-style restart intensity; past it the actor is reported failed.
//! - [`stats`]: per-actor mailbox depth and capacity, handled, refused, restarts, last failure.
//! - [`tree`]: children started in order, stopped in reverse, observed together.
//! - [`crash`]: the injected fault ([`Crash`]) each actor declares it can take.
//!
//! The toolkit above names no actor. An actor imports the toolkit, the pure helpers ([`gcra`],
//! `key_table`, [`concurrency`], [`breaker`]) and the resources it stands on (`Jobs` runs its
//! commands through `Db`; the cache and the limiter reach Redis through [`redis_link`]), and
//! nothing imports back up: what one actor needs from another crosses as a command or a small
//! type owned by the side with the need (the jobs give `DbProbe` a [`ProbeQuery`]; the memory
//! monitor is handed a [`Shrinker`], which the cache offers).
//!
//! - [`cache`]: the `Cache` actor owning the in-process tier of serialized responses, with
//!   single-flight loads, scoped invalidation and stale-if-error; hits are read without a message.
//! - [`db`]: the `Db` actor owning a deadpool-postgres pool and running typed commands within
//!   their callers' deadlines, and `DbProbe`, the readiness lane.
//! - The guardians: [`breaker`] (a circuit per dependency, resilience4j's model) and
//!   [`breakers`] (the actor owning them all); [`limiter`] (GCRA rate limits in process or in
//!   Redis); [`concurrency`] (an adaptive concurrency limit with criticality); [`memory`] (the
//!   monitor that sheds and shrinks the cache under memory pressure); [`redis_link`] (one Redis
//!   dependency behind its circuit).
//! - [`jobs`]: the `Jobs` dispatcher of the durable job queue (claims under a lease, retries,
//!   ordering, wake-ups by `LISTEN/NOTIFY`).

pub mod admission;
pub mod breaker;
pub mod breakers;
pub mod cache;
pub mod concurrency;
pub mod crash;
pub mod db;
pub mod gcra;
pub mod jobs;
mod key_table;
pub mod limiter;
pub mod memory;
pub mod redis_link;
pub mod shared_tier;
pub mod stats;
pub mod supervision;
pub mod trace;
pub mod tree;

pub use admission::{
    current_deadline, serve, serve_call, with_deadline, CallError, Caller, Envelope, Handle, Reply,
    Request,
};
pub use breaker::{
    Breaker, BreakerSettings, Call, Circuit, CircuitSnapshot, CircuitState, Observer, Open,
    Transition,
};
pub use breakers::{BreakerBoard, Breakers, Change, CircuitFor};
pub use cache::{
    Alias, Cache, CacheReader, CacheSettings, CacheSnapshot, Entry, Invalidate, LoadError, Loaded,
    Loader, Lookup, Shrink,
};
pub use concurrency::{ConcurrencyLimit, Criticality, LimitSettings, LimitSnapshot, Permit};
pub use crash::Crash;
pub use db::{
    commit, Conn, Db, DbCommand, DbError, DbGauge, DbProbe, DbSettings, Exec, Ping, Probe,
    ProbeQuery, Tx,
};
pub use gcra::{Decision, Gcra};
pub use jobs::{
    Busy, ClaimRunner, ClaimedJob, Effect, InClaim, JobFailure, JobRunner, Jobs, JobsBoard,
    JobsSettings, QueueCounts, QueueHealth, ReadQueueHealth, Runners, Wake,
};
pub use limiter::{ClassSnapshot, LimitClass, Limiter, LimiterSnapshot, RateLimits, Verdict};
pub use memory::{
    MemoryBoard, MemoryLevel, MemoryMonitor, MemorySettings, MemorySnapshot, Pressure, Shrinker,
};
pub use redis_link::{LinkSnapshot, RedisLink};
pub use shared_tier::{SharedTier, SharedTierSettings, SharedTierSnapshot};
pub use stats::{ActorState, ActorStats, StatsSnapshot};
pub use supervision::{ActorSpec, Resilient, RestartPolicy, Stop, Supervision};
pub use tree::Tree;
