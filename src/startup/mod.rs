//! Startup is a value: [`Application::build`] starts the database (the configured one, or a
//! local cluster), the supervision tree ([`Backend`]) and the HTTP server bound to its port, and
//! returns something with [`Application::port`] and [`Application::run_until_stopped`]. `main`
//! only composes; tests build the same value on port 0.

pub mod backend;
pub mod database;
pub mod error;
pub mod guards;
pub mod server;

pub use backend::{Backend, Handles};
pub use database::pg_config;
pub use error::StartupError;

use crate::probes::{Checks, Sampled, Sampler};
use crate::settings::Settings;
use crate::storefront_cache::StoreCache;
use actix_web::dev::{Server, ServerHandle};
use rampart_actors::{Db, DbGauge, Handle};
use std::sync::Arc;

pub struct Application {
    port: u16,
    management_port: Option<u16>,
    /// Refreshes readiness' sample until the server stops.
    sampler: Sampler,
    server: Server,
    backend: Backend,
    demo_api_key: Option<String>,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let settings = Arc::new(settings);
        let backend = Backend::start(&settings, settings.jobs.enabled).await?;
        let demo_api_key = if settings.dev.demo_merchant {
            Some(
                crate::demo::ensure(&backend.db, &settings, backend.cluster().is_some())
                    .await
                    .map_err(StartupError::Demo)?,
            )
        } else {
            None
        };
        // Readiness answers from the first sample as soon as the port opens.
        let checks = Checks::new(
            backend.probe.clone(),
            backend.cache.shared.clone(),
            &settings,
        );
        let sampled = Sampled::first(&checks).await;
        let listeners = server::Listeners::bind(&settings)?;
        let (port, management_port) = (listeners.port, listeners.ports().management);
        let state = server::app_state(&backend, &settings, &sampled);
        let server = server::serve(state, &settings, listeners)?;
        backend::prune_idempotency_keys(backend.db.clone());
        let sampler = sampled.refresh(checks, Settings::ms(settings.health.refresh_ms));
        Ok(Self {
            port,
            management_port,
            sampler,
            server,
            backend,
            demo_api_key,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of `/metrics` and `/api/v1/ops/stats` when `server.management_port` is set
    /// (as bound: a configured 0 is a free port).
    pub fn management_port(&self) -> Option<u16> {
        self.management_port
    }

    pub fn demo_api_key(&self) -> Option<&str> {
        self.demo_api_key.as_deref()
    }

    /// Stops the server gracefully when called (tests; signals do the same in production).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    pub fn db(&self) -> &Handle<Db> {
        &self.backend.db
    }

    pub fn gauge(&self) -> &DbGauge {
        &self.backend.gauge
    }

    pub fn cache(&self) -> &StoreCache {
        &self.backend.cache
    }

    pub fn handles(&self) -> &Handles {
        &self.backend.handles
    }

    /// Serves until SIGTERM or SIGINT (or [`ServerHandle::stop`]): stops accepting, lets
    /// in-flight requests finish up to `server.shutdown_timeout_secs`, then stops the actors in
    /// reverse start order and the local cluster.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        tracing::info!("HTTP server stopped; stopping actors");
        self.sampler.stop();
        self.backend.shutdown().await;
        served
    }
}
