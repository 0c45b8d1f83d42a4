//! What handlers hold: actor handles and settings, never a pool or a connection.

use crate::domain::listing::CursorKey;
use crate::settings::Settings;
use crate::storefront_cache::StoreCache;
use ipnet::IpNet;
use rampart_actors::{BreakerBoard, Db, DbGauge, DbProbe, Handle, MemoryBoard, RateLimits, Tree};
use std::sync::Arc;

pub struct AppState {
    pub db: Handle<Db>,
    pub probe: Handle<DbProbe>,
    pub gauge: DbGauge,
    pub cache: StoreCache,
    pub breakers: BreakerBoard,
    /// `None`: `rate_limit.enabled` is off.
    pub limits: Option<RateLimits>,
    pub concurrency: crate::startup::EdgeLimits,
    pub memory: MemoryBoard,
    pub trusted_proxies: Vec<IpNet>,
    pub tree: Arc<Tree>,
    pub settings: Arc<Settings>,
    pub cursor_key: CursorKey,
}
