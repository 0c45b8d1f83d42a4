//! The HTTP server: its listeners, what its handlers hold ([`AppState`]), and the edge's
//! middleware in order around the routes.

use crate::domain::listing::CursorKey;
use crate::error::ApiError;
use crate::http::metrics::Metrics;
use crate::http::ports::Ports;
use crate::known_keys::KnownKeys;
use crate::probes::Sampled;
use crate::settings::Settings;
use crate::startup::backend::Backend;
use crate::startup::error::StartupError;
use crate::state::AppState;
use crate::{http, routes};
use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

/// The bound listeners: the main port and, with `server.management_port`, the management port.
pub struct Listeners {
    main: TcpListener,
    pub port: u16,
    management: Option<(TcpListener, u16)>,
}

impl Listeners {
    pub fn bind(settings: &Settings) -> Result<Self, StartupError> {
        let (main, port) = bind(&settings.server.host, settings.server.port)?;
        let management = match settings.server.management_port {
            Some(m) => Some(bind(&settings.server.host, m)?),
            None => None,
        };
        Ok(Self {
            main,
            port,
            management,
        })
    }

    /// Which port serves what.
    pub fn ports(&self) -> Ports {
        Ports {
            management: self.management.as_ref().map(|(_, port)| *port),
        }
    }
}

/// A listener on `host:port`, and the port it got (`0`: a free one).
fn bind(host: &str, port: u16) -> Result<(TcpListener, u16), StartupError> {
    let addr = format!("{host}:{port}");
    let listener = TcpListener::bind(&addr).map_err(|source| StartupError::Bind {
        addr: addr.clone(),
        source,
    })?;
    let port = listener
        .local_addr()
        .map_err(|source| StartupError::Bind { addr, source })?
        .port();
    Ok((listener, port))
}

/// What the handlers hold: the backend's handles, readiness' sample and the settings.
pub fn app_state(backend: &Backend, settings: &Arc<Settings>, sampled: &Sampled) -> AppState {
    AppState {
        db: backend.db.clone(),
        reads: backend.reads.clone(),
        probe: backend.probe.clone(),
        sampled: sampled.clone(),
        gauge: backend.gauge.clone(),
        cache: backend.cache.clone(),
        breakers: backend.breakers.clone(),
        limits: backend.limits.clone(),
        concurrency: backend.concurrency.clone(),
        memory: backend.memory.clone(),
        jobs: backend.handles.jobs.clone(),
        jobs_board: backend.jobs.clone(),
        trusted_proxies: settings.trusted_proxies(),
        tree: Arc::clone(&backend.tree),
        settings: Arc::clone(settings),
        cursor_key: signing_key(settings),
        known_keys: KnownKeys::default(),
    }
}

/// Cursors must verify on every instance: the configured secret (required in production), else
/// a random key for this process alone. Never derived from another secret.
fn signing_key(settings: &Settings) -> CursorKey {
    if let Some(secret) = &settings.server.cursor_secret {
        return CursorKey::new(secret.expose().as_bytes());
    }
    tracing::warn!(
        "server.cursor_secret is unset: cursors are signed with a key of this process only"
    );
    let mut random = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut random);
    CursorKey::new(&random)
}

/// The server, started on `listeners`: the routes inside the edge's middleware, outermost last.
pub fn serve(
    state: AppState,
    settings: &Settings,
    listeners: Listeners,
) -> Result<Server, StartupError> {
    let state = web::Data::new(state);
    let ports = listeners.ports();
    let metrics = web::Data::new(Metrics::new()?);
    let body_limit = settings.server.body_limit_bytes;
    let mut server =
        HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(metrics.clone())
                .app_data(web::PayloadConfig::new(body_limit))
                .app_data(web::QueryConfig::default().error_handler(|e, _| {
                    ApiError::bad_request(format!("query string: {e}")).into()
                }))
                .configure(routes::configure)
                .default_service(web::to(routes::not_found))
                // Innermost: a route this port does not serve is an unknown route's 404.
                .wrap(from_fn(move |req, next: actix_web::middleware::Next<_>| {
                    http::ports::middleware(ports, req, next)
                }))
                .wrap(http::problems::fallback())
                .wrap(from_fn(http::compress::middleware))
                // Shed after the limit's decision, so a shed answer on a limited route still
                // tells the client its budget (cheap: in process, or leased from Redis); within
                // the deadline, so a wait for a place counts against it.
                .wrap(from_fn(http::shed::middleware))
                .wrap(from_fn(http::deadline::middleware))
                .wrap(from_fn(http::rate_limit::middleware))
                .wrap(from_fn(http::metrics::middleware))
                .wrap(from_fn(http::request_id::middleware))
        })
        .keep_alive(Duration::from_secs(settings.server.keep_alive_secs))
        .max_connections(settings.server.max_connections)
        .backlog(4096)
        .shutdown_timeout(settings.server.shutdown_timeout_secs)
        // Signals are `main`'s: actix-server's own SIGTERM handling stops the whole actix
        // System shortly after the HTTP server, cutting off the actors' shutdown (the jobs' drain
        // and hand-back) halfway.
        .disable_signals();
    if settings.server.workers > 0 {
        server = server.workers(settings.server.workers);
    }
    let port = listeners.port;
    server = server
        .listen(listeners.main)
        .map_err(|source| StartupError::Bind {
            addr: format!("port {port}"),
            source,
        })?;
    if let Some((listener, management)) = listeners.management {
        server = server
            .listen(listener)
            .map_err(|source| StartupError::Bind {
                addr: format!("port {management}"),
                source,
            })?;
    }
    Ok(server.run())
}
