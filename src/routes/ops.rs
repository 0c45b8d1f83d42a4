//! `GET /api/v1/ops/stats` (admin): one JSON snapshot of what `/metrics` shows, for people.

use crate::http::metrics::{Metrics, RequestCounts};
use crate::http::AdminAuth;
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use rampart_actors::db::PoolSnapshot;
use rampart_actors::{
    CacheSnapshot, Change, CircuitSnapshot, LimitSnapshot, LimiterSnapshot, MemorySnapshot,
    QueueCounts, QueueHealth, SharedTierSnapshot, StatsSnapshot,
};
use serde::Serialize;

/// Every actor, tier, guardian, the pool and the job queues, read now without waiting in the
/// mailboxes requests use (the queues as last sampled, every `health.refresh_ms`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct OpsStats {
    /// Per actor: state, mailbox depth and capacity, handled, refused, expired, restarts.
    #[schema(value_type = Vec<Object>)]
    pub actors: Vec<StatsSnapshot>,
    #[schema(value_type = Object)]
    pub cache: CacheSnapshot,
    /// The Redis tier (absent without `redis.url`).
    #[schema(value_type = Option<Object>)]
    pub redis: Option<SharedTierSnapshot>,
    /// Rate limit decisions per class (absent with `rate_limit.enabled` off).
    #[schema(value_type = Option<Object>)]
    pub limiter: Option<LimiterSnapshot>,
    /// One circuit per dependency.
    #[schema(value_type = Vec<Object>)]
    pub breakers: Vec<CircuitSnapshot>,
    /// The circuits' latest changes, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub breaker_changes: Vec<Change>,
    #[schema(value_type = Option<Object>)]
    pub memory: Option<MemorySnapshot>,
    /// The edge's concurrency limits (reads, writes) and what they shed.
    #[schema(value_type = Object)]
    pub overload: std::collections::BTreeMap<&'static str, LimitSnapshot>,
    #[schema(value_type = Object)]
    pub pool: PoolSnapshot,
    /// The read replicas: circuit, lag and reads answered.
    #[schema(value_type = Vec<Object>)]
    pub replicas: Vec<crate::replicas::ReplicaSnapshot>,
    pub requests: RequestCounts,
    pub jobs: JobStats,
    /// Resident memory now, bytes.
    pub rss_bytes: Option<u64>,
}

/// The job queues across every instance (absent when PostgreSQL did not answer in time) and
/// this instance's runs.
#[derive(Serialize, utoipa::ToSchema)]
pub struct JobStats {
    #[schema(value_type = Option<Vec<Object>>)]
    pub queues: Option<Vec<QueueHealth>>,
    #[schema(value_type = Vec<Object>)]
    pub runs_here: Vec<QueueCounts>,
    /// Whether this instance's `LISTEN` connection is up.
    pub listening: bool,
}

/// One JSON snapshot of what `/metrics` shows. With `server.management_port` set, served only on
/// that port (404 on the main port).
#[utoipa::path(get, path = "/api/v1/ops/stats", tag = "ops", operation_id = "opsStats",
    responses((status = 200, body = OpsStats), (status = 401, response = crate::routes::responses::Unauthorized),
        (status = 404, response = crate::routes::responses::NotFound)),
    security(("admin_token" = [])))]
pub async fn stats(
    _: AdminAuth,
    state: web::Data<AppState>,
    metrics: web::Data<Metrics>,
) -> HttpResponse {
    let memory = state.memory.snapshot();
    HttpResponse::Ok().json(OpsStats {
        actors: state.tree.snapshot(),
        cache: state.cache.reader.snapshot(),
        redis: state.cache.shared.as_ref().map(|s| s.snapshot()),
        limiter: state.limits.as_ref().map(|l| l.snapshot()),
        breakers: state.breakers.snapshot(),
        breaker_changes: state.breakers.history(),
        rss_bytes: crate::routes::health::rss(memory.as_ref()),
        memory,
        overload: state.concurrency.snapshot().into_iter().collect(),
        pool: state.gauge.snapshot(),
        replicas: state.reads.snapshot(),
        requests: metrics.counts(),
        jobs: JobStats {
            queues: crate::routes::health::queue_health(&state),
            runs_here: state.jobs_board.snapshot(),
            listening: state.jobs_board.listening(),
        },
    })
}
