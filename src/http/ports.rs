//! Which port serves what (`server.management_port`). Unset: everything on the main port. Set:
//! `/metrics` and `/api/v1/ops/stats` only on the management port, `/health` and
//! `/health/ready` on both, everything else (`/api-docs/openapi.json` and `/docs/` included) on
//! the main port only. A request on the wrong port is the 404 of an unknown route.
//!
//! Both ports are listeners of one server, so this is decided per request from the listener's
//! address, innermost of the middleware (a refused request is counted, identified and shaped
//! like any other 404), before routing: one comparison when no management port is set.

use crate::error::ApiError;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

/// The management port as bound (`None`: the ops endpoints share the main port).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub management: Option<u16>,
}

impl Ports {
    /// Whether a request for `path` that arrived on `local_port` is served there.
    pub fn serves(&self, local_port: u16, path: &str) -> bool {
        let Some(management) = self.management else {
            return true;
        };
        match path {
            "/health" | "/health/ready" => true,
            "/metrics" | "/api/v1/ops/stats" => local_port == management,
            _ => local_port != management,
        }
    }
}

/// Answers 404 for a route that this port does not serve.
pub async fn middleware<B: MessageBody + 'static>(
    ports: Ports,
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<actix_web::body::EitherBody<B>>, actix_web::Error> {
    if ports.management.is_some() {
        // The path as the router matches it (percent-decoded where that is safe), so an
        // encoded `/%6Detrics` is judged as `/metrics`.
        let port = req.app_config().local_addr().port();
        if !ports.serves(port, req.match_info().as_str()) {
            return Ok(req.error_response(ApiError::NotFound).map_into_right_body());
        }
    }
    Ok(next.call(req).await?.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use super::Ports;

    #[test]
    fn without_a_management_port_everything_is_served_on_the_main_port() {
        let ports = Ports { management: None };
        for path in [
            "/metrics",
            "/api/v1/ops/stats",
            "/health/ready",
            "/docs/",
            "/x",
        ] {
            assert!(ports.serves(8080, path), "{path}");
        }
    }

    #[test]
    fn with_one_ops_are_served_only_there_and_probes_on_both() {
        let ports = Ports {
            management: Some(8081),
        };
        for path in ["/metrics", "/api/v1/ops/stats"] {
            assert!(!ports.serves(8080, path), "{path} on the main port");
            assert!(ports.serves(8081, path), "{path} on the management port");
        }
        for path in ["/health", "/health/ready"] {
            assert!(
                ports.serves(8080, path) && ports.serves(8081, path),
                "{path}"
            );
        }
        for path in [
            "/api-docs/openapi.json",
            "/docs/",
            "/api/v1/products",
            "/api/v1/stores/x/products",
            "/metrics/",
        ] {
            assert!(!ports.serves(8081, path), "{path} on the management port");
        }
        assert!(ports.serves(8080, "/api-docs/openapi.json"));
    }
}
