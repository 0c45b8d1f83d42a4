//! Overload at the edge: every request asks its lane's [`rampart_actors::ConcurrencyLimit`]
//! (reads or writes, see [`crate::state::EdgeLimits`]) for a place by its criticality, and
//! waits its turn when the lane is full. Ops endpoints (health, metrics, ops, the API
//! description) never wait; a checkout is served before other writes; under memory pressure
//! everything but ops is refused. A request is refused (503 with `Retry-After`) only when its
//! expected wait and its work would pass its deadline, so the deadline middleware runs outside
//! this one and the wait counts against it. The refusal comes after the rate limit's decision
//! (so a limited route still tells its budget) and before the handler or any actor (a few atomic
//! operations and the problem body; a small body that came with the head is dropped first so the
//! connection stays open, see [`crate::http::refusal`]).

use crate::error::ApiError;
use crate::http::refusal;
use crate::state::AppState;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use rampart_actors::{current_deadline, Criticality};
use std::time::Instant;

fn criticality(req: &ServiceRequest) -> Criticality {
    // The decoded path, as the router sees it (`/%6Detrics` is `/metrics`).
    let path = req.match_info().as_str();
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
    let Some(permit) = limit.acquire(criticality(&req), current_deadline()).await else {
        let response = ApiError::Overloaded { retry_after: 1 }.error_response();
        return Ok(refusal::refuse(req, response).await);
    };
    let started = Instant::now();
    let response = next.call(req).await?;
    // The pace of the lane is that of work done: an answer refused before any (401, 404, 422)
    // would make the expected wait look shorter than it is.
    let status = response.status();
    if !status.is_client_error() || status == StatusCode::CONFLICT {
        permit.finish(started.elapsed());
    }
    Ok(response.map_into_left_body())
}
