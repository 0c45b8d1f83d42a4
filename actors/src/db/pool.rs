//! The primary's (or a replica's) connection pool as `Db` owns it: its settings, and
//! [`DbGauge`], the pool and the command slots published for reading without a message.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_postgres::NoTls;

#[derive(Debug, Clone)]
pub struct DbSettings {
    pub pg: tokio_postgres::Config,
    pub max_connections: usize,
    /// Commands running at once.
    pub max_inflight: usize,
    /// Commands waiting for a slot before further ones are refused.
    pub max_waiting: usize,
    pub wait_timeout: Duration,
    pub create_timeout: Duration,
    pub recycle_timeout: Duration,
}

impl DbSettings {
    fn build_pool(&self) -> Pool {
        let manager = Manager::from_config(
            self.pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // Building only fails without a runtime or with a zero size, both fixed here.
        Pool::builder(manager)
            .max_size(self.max_connections.max(1))
            .wait_timeout(Some(self.wait_timeout))
            .create_timeout(Some(self.create_timeout))
            .recycle_timeout(Some(self.recycle_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .unwrap_or_else(|e| unreachable!("pool settings are fixed: {e}"))
    }
}

/// What `Db` owns and publishes for reading without a message: the pool and the slots.
#[derive(Clone)]
pub struct DbGauge {
    pub(super) pool: Pool,
    pub(super) slots: Arc<Semaphore>,
    pub(super) waiting: Arc<AtomicUsize>,
    max_inflight: usize,
}

impl DbGauge {
    pub fn new(settings: &DbSettings) -> Self {
        let max_inflight = settings.max_inflight.max(1);
        Self {
            pool: settings.build_pool(),
            slots: Arc::new(Semaphore::new(max_inflight)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_inflight,
        }
    }

    /// Pool usage now, for metrics: no message, no wait.
    pub fn snapshot(&self) -> PoolSnapshot {
        let status = self.pool.status();
        PoolSnapshot {
            max_size: status.max_size,
            size: status.size,
            available: status.available,
            waiting: status.waiting,
            inflight: self
                .max_inflight
                .saturating_sub(self.slots.available_permits()),
            queued: self.waiting.load(Ordering::Relaxed),
        }
    }
}

/// Pool usage, for metrics and people.
#[derive(Debug, Clone, Serialize)]
pub struct PoolSnapshot {
    pub max_size: usize,
    pub size: usize,
    pub available: usize,
    pub waiting: usize,
    /// Commands holding a slot.
    pub inflight: usize,
    /// Commands waiting for a slot.
    pub queued: usize,
}
