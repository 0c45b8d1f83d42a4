//! Overload shedding at the edge: every request asks its lane's
//! [`rampart_actors::ConcurrencyLimit`] (reads or writes, see [`crate::startup::EdgeLimits`])
//! for a place by its criticality. Ops endpoints (health, metrics, ops, the API description) are
//! never shed; a checkout only at the full limit, after the other writes; under memory pressure
//! everything but ops is. A shed request is answered 503 with `Retry-After` at once: after the
//! rate limit's decision (so a limited route still tells its budget), before the deadline, the
//! handler or any actor (two atomic operations and the problem body; a small body that came with
//! the head is dropped first so the connection stays open, see [`crate::http::refusal`]).

use crate::error::ApiError;
use crate::http::refusal;
use crate::state::AppState;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use rampart_actors::Criticality;
use std::time::Instant;

fn criticality(req: &ServiceRequest) -> Criticality {
    let path = req.path();
    let ops = path == "/health"
        || path.starts_with("/health/")
        || path == "/metrics"
        || path.starts_with("/api/v1/ops/")
        || path.starts_with("/api-docs/");
    if ops {
        Criticality::Critical
    } else if req.method() == Method::POST
        && path.starts_with("/api/v1/stores/")
        && path.ends_with("/orders")
    {
        Criticality::Important
    } else {
        Criticality::Sheddable
    }
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let Some(limit) = req.app_data::<web::Data<AppState>>().map(|s| {
        if read {
            s.concurrency.reads.clone()
        } else {
            s.concurrency.writes.clone()
        }
    }) else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let Some(permit) = limit.try_acquire(criticality(&req)) else {
        let response = ApiError::Overloaded { retry_after: 1 }.error_response();
        return Ok(refusal::refuse(req, response).await);
    };
    let started = Instant::now();
    let response = next.call(req).await;
    permit.finish(started.elapsed());
    Ok(response?.map_into_left_body())
}
