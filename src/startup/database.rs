//! The connections the tree is started with: PostgreSQL (the configured server, or a local
//! cluster), the settings of every session and pool, and the link to Redis.

use crate::blocking::blocking;
use crate::pg_cluster::{Cluster, Durability};
use crate::settings::Settings;
use crate::startup::error::StartupError;
use rampart_actors::{BreakerBoard, BreakerSettings, DbSettings, RedisLink};
use std::str::FromStr;
use std::time::Duration;

/// The pool settings every `Db` shares, but the server it connects to.
pub fn db_settings_for(settings: &Settings) -> DbSettings {
    DbSettings {
        pg: tokio_postgres::Config::new(),
        max_connections: settings.database.max_connections,
        max_inflight: settings.database.max_inflight,
        max_waiting: settings.actors.db.mailbox,
        wait_timeout: Settings::ms(settings.database.wait_timeout_ms),
        create_timeout: Settings::ms(settings.database.create_timeout_ms),
        recycle_timeout: Settings::ms(settings.database.recycle_timeout_ms),
    }
}

/// The primary's connection settings, and the local cluster when `database.url` is unset.
pub async fn database(
    settings: &Settings,
) -> Result<(tokio_postgres::Config, Option<Cluster>), StartupError> {
    let (url, cluster) = match &settings.database.url {
        Some(url) => (url.expose().to_owned(), None),
        None => {
            let dir = settings.database.data_dir.join("postgres");
            let at = dir.clone();
            let cluster =
                blocking(move || Cluster::start(&at, None, Durability::Durable)).await??;
            cluster.ensure_database("rampart").await?;
            tracing::info!(port = cluster.port(), dir = %dir.display(), owned = cluster.is_owned(), "local PostgreSQL");
            (cluster.url("rampart"), Some(cluster))
        }
    };
    Ok((pg_config(settings, &url)?, cluster))
}

/// The connection settings of every session: deadlines the server enforces (statements, and
/// sessions left idle inside a transaction, so a partitioned client cannot hold row locks for
/// long) and TCP keepalives, so a dead peer is noticed in about three `tcp_keepalive_secs`.
pub fn pg_config(settings: &Settings, url: &str) -> Result<tokio_postgres::Config, StartupError> {
    let db = &settings.database;
    let mut pg = tokio_postgres::Config::from_str(url)
        .map_err(|e| StartupError::DatabaseUrl(e.to_string()))?;
    let keepalive = Duration::from_secs(db.tcp_keepalive_secs);
    pg.application_name("rampart")
        .connect_timeout(Settings::ms(db.create_timeout_ms))
        .keepalives(true)
        .keepalives_idle(keepalive)
        .keepalives_interval((keepalive / 3).max(Duration::from_secs(1)))
        .keepalives_retries(3)
        .options(format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            db.statement_timeout_ms, db.idle_in_transaction_timeout_ms
        ));
    Ok(pg)
}

/// The link to Redis, when `redis.url` is set, behind Redis's circuit: `redis.breaker_failures`
/// failed commands in a row open it for `redis.breaker_open_ms`.
pub fn redis_link(
    settings: &Settings,
    board: &BreakerBoard,
) -> Result<Option<RedisLink>, StartupError> {
    let Some(url) = &settings.redis.url else {
        return Ok(None);
    };
    let r = &settings.redis;
    let breaker = BreakerSettings {
        failure_rate: 1.0,
        window: r.breaker_failures,
        minimum_calls: r.breaker_failures,
        open_for: Settings::ms(r.breaker_open_ms),
        half_open_probes: 1,
        ..settings.breakers.breaker()
    };
    let circuit = board.register("redis", breaker);
    RedisLink::new(url.expose(), Settings::ms(r.command_timeout_ms), circuit)
        .map(Some)
        .map_err(|e| StartupError::RedisUrl(e.to_string()))
}
