//! `Jobs`: dispatches the durable jobs of the `jobs` table (an outbox written in the transactions
//! whose effects the jobs follow) to the runners registered per kind.
//!
//! Messages: [`Wake`] (a commit wrote jobs; sent by the request path after commit, never
//! waited on), [`Crash`](crate::Crash) (tests), [`Stop`](crate::Stop); its own job
//! tasks report back with `Finished`. What it promises:
//!
//! - **At least once.** A job is claimed with `FOR UPDATE SKIP LOCKED` under a lease
//!   (`locked_until`), renewed while it runs. A lease that runs out (a crashed or frozen
//!   instance) puts the job back within a lease plus a poll interval, so every job of a committed
//!   transaction runs, and none of a rolled-back one exists to run. A job may run twice after a
//!   crash, so every runner is idempotent; in normal operation (leases renewed) none does.
//! - **Bounded work.** Each queue runs at most its configured number of runs at once on this
//!   instance (a run is one job, or a batch of one kind for runners that take batches); a claim
//!   takes only what its free places can run, so a busy queue leaves the rest for other
//!   instances. While the foreground is busy ([`JobsSettings::busy`]) each queue has one place.
//! - **Cheap bookkeeping.** Outcomes are written in batches (whatever finished while the previous
//!   write was under way, at most `RECORD_AT_MOST` a write; no claims while more wait), and
//!   claims and outcomes commit without waiting for the WAL flush ([`ASYNC_COMMIT`] says why
//!   that is safe).
//! - **In the claim.** A kind whose work is writes to this database ([`ClaimRunner`]) runs
//!   inside the transaction that claims its jobs: claim, work and outcome commit together or not
//!   at all, and that transaction is the lease (`in_claim` says how it is bounded and renewed).
//! - **Effects apart.** A kind whose work leaves the service (a mail, [`Effect`]) is never run
//!   inside a transaction that can roll back: its batch is claimed under a committed lease, and
//!   each effect is made and its outcome recorded before the next (`effects`), so a graceful
//!   stop repeats none and a crash at most the one in flight per run.
//! - **Retries.** A failure is retried after exponential backoff with full jitter; after
//!   `max_attempts` the job is `dead`. A [`JobFailure::Deferred`] (the destination's circuit is
//!   open) moves the job later without spending an attempt.
//! - **Order.** Jobs sharing an `ordering_key` run one at a time, oldest first: an order's
//!   webhooks reach the merchant in the order its events happened.
//! - **Wake-ups.** A local [`Wake`] claims at once and sends one coalesced `NOTIFY` (after the
//!   commit, outside its transaction: a notifying commit takes a cluster-wide lock) so other
//!   instances wake too; they `LISTEN` on a connection of their own. While a queue's next claim
//!   is already scheduled (busy), commits send no wake-up ([`JobsBoard::wake_needed`]). Polling
//!   every `poll_interval` covers a lost notification or a broken listener.
//! - **Shutdown.** [`Stop`](crate::Stop) stops claiming and starting effects, lets running jobs
//!   finish and their outcomes be written for up to `drain`, then gives back what it still
//!   holds (not counted as an attempt).
//!
//! The database work goes through the [`Db`](crate::Db) actor like any other command, so the jobs share
//! PostgreSQL's circuit, deadlines and backpressure with the requests.
//!
//! The modules: what a kind provides (`runner`), the settings (`settings`), the counters ops read
//! (`board`), claiming (`claim`) and running in the claim (`in_claim`), the leases of runs apart
//! (`lease`), runs of effects (`effects`), outcomes and retries (`outcome`), wake-ups (`wake`), queue health (`health`), and
//! the actor that ties them (`dispatcher`).

mod board;
mod claim;
mod dispatcher;
mod effects;
mod health;
mod in_claim;
mod lease;
mod outcome;
mod runner;
mod settings;
#[cfg(test)]
mod tests;
mod wake;

pub use board::{JobsBoard, QueueCounters, QueueCounts};
pub use claim::ASYNC_COMMIT;
pub use dispatcher::Jobs;
pub use health::{QueueHealth, ReadQueueHealth};
pub use outcome::backoff;
pub use runner::{ClaimRunner, ClaimedJob, Effect, InClaim, JobFailure, JobRunner, Runners};
pub use settings::{Busy, JobsSettings};
pub use wake::{Wake, CHANNEL};
