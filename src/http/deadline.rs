//! Every request gets one deadline at the edge (`server.request_timeout_ms`). It travels with
//! every actor call made while handling the request ([`rampart_actors::with_deadline`]): work
//! whose deadline passes is abandoned and rolled back, never committed later, and the client
//! gets 503. Ops routes get the same deadline; they never wait in request lanes anyway.

use crate::state::AppState;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use rampart_actors::with_deadline;
use tokio::time::Instant;

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let timeout = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.settings.server.request_timeout_ms)
        .unwrap_or(5000);
    let deadline = Instant::now() + std::time::Duration::from_millis(timeout);
    with_deadline(deadline, next.call(req)).await
}
