//! What can stop the service from starting, each cause named.

use crate::pg_cluster::ClusterError;
use rampart_actors::DbError;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("database.url: {0}")]
    DatabaseUrl(String),
    #[error("redis.url: {0}")]
    RedisUrl(String),
    #[error("applying migrations: {0}")]
    Migrate(DbError),
    #[error("creating the demo merchant: {0}")]
    Demo(DbError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("a blocking startup step failed to run: {0}")]
    Blocking(#[from] crate::blocking::JoinError),
}
