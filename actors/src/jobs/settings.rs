//! What the dispatcher is configured with: its instance name, the queues it dispatches and their
//! concurrency, leases, polling, backoff, draining, and whether the foreground is busy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub struct JobsSettings {
    /// Names this instance in `locked_by`.
    pub instance: String,
    /// Concurrency per queue; only these queues are dispatched.
    pub queues: BTreeMap<String, usize>,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The sessions' own limits on idling inside a transaction and on one statement (`None`:
    /// none): a run in its claim keeps within these as well as the lease.
    pub session_idle_limit: Option<Duration>,
    pub session_statement_limit: Option<Duration>,
    /// How long [`Stop`](crate::Stop) lets running jobs finish before giving them back.
    pub drain: Duration,
    /// The connection that `LISTEN`s (`None`: polling only).
    pub listen: Option<tokio_postgres::Config>,
    /// Whether requests are busy now: background work yields to them, each queue running one
    /// job at a time until they are not (`None`: never).
    pub busy: Option<Busy>,
}

/// Says whether the foreground is busy (read on every claim: atomics, no message).
pub type Busy = Arc<dyn Fn() -> bool + Send + Sync>;
