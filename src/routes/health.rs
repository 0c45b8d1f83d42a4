//! Ops endpoints: liveness, readiness, metrics. Never rate limited or shed.

use crate::http::metrics::{resident_memory, Metrics};
use crate::settings::Settings;
use crate::state::AppState;
use actix_web::http::header::ContentType;
use actix_web::{web, HttpResponse};
use rampart_actors::{ActorState, Ping, PoolStatus};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// 200 while the process serves; touches no dependency.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// 200 `ready` or `degraded` while PostgreSQL answers within the deadline and every actor runs;
/// else 503 `unready`.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let deadline = Settings::ms(state.settings.health.ready_timeout_ms);
    let mut checks = Map::new();
    let mut unready = false;

    let started = std::time::Instant::now();
    let postgres = state.db.run_within(Ping, deadline).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    checks.insert(
        "postgres".into(),
        match postgres {
            Ok(()) => json!({"status": "up", "latency_ms": (latency_ms * 10.0).round() / 10.0}),
            Err(e) => {
                unready = true;
                json!({"status": "down", "error": e.to_string()})
            }
        },
    );
    checks.insert(
        "redis".into(),
        if state.settings.redis.url.is_some() {
            json!({"status": "unchecked"})
        } else {
            json!({"status": "disabled"})
        },
    );
    for actor in state.tree.snapshot() {
        let failed = actor.state == ActorState::Failed || actor.state == ActorState::Stopped;
        unready |= failed;
        checks.insert(
            format!("actor.{}", actor.name),
            json!({
                "status": if failed { "down" } else { "up" },
                "state": actor.state,
                "mailbox_depth": actor.mailbox_depth,
                "mailbox_capacity": actor.mailbox_capacity,
                "restarts": actor.restarts,
                "last_failure": actor.last_failure,
            }),
        );
    }
    let body = json!({"status": if unready { "unready" } else { "ready" }, "checks": Value::Object(checks)});
    if unready {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}

pub async fn metrics(state: web::Data<AppState>, metrics: web::Data<Metrics>) -> HttpResponse {
    let pool = state
        .db
        .call_within(PoolStatus, Duration::from_millis(500))
        .await
        .ok();
    let text = metrics.render(&state.tree.snapshot(), pool.as_ref(), resident_memory());
    HttpResponse::Ok()
        .insert_header(ContentType(prometheus_text()))
        .body(text)
}

fn prometheus_text() -> actix_web::mime::Mime {
    "text/plain; version=0.0.4; charset=utf-8"
        .parse()
        .unwrap_or(actix_web::mime::TEXT_PLAIN_UTF_8)
}
