//! What handlers hold: actor handles and settings, never a pool or a connection.

use crate::domain::listing::CursorKey;
use crate::settings::Settings;
use crate::storefront_cache::StoreCache;
use rampart_actors::{Db, DbGauge, DbProbe, Handle, Tree};
use std::sync::Arc;

pub struct AppState {
    pub db: Handle<Db>,
    pub probe: Handle<DbProbe>,
    pub gauge: DbGauge,
    pub cache: StoreCache,
    pub tree: Arc<Tree>,
    pub settings: Arc<Settings>,
    pub cursor_key: CursorKey,
}
