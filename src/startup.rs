//! Startup is a value: [`Application::build`] starts the database (the configured one, or a
//! local cluster), the supervision tree and the HTTP server bound to its port, and returns
//! something with [`Application::port`] and [`Application::run_until_stopped`]. `main` only
//! composes; tests build the same value on port 0.

use crate::domain::listing::CursorKey;
use crate::error::ApiError;
use crate::http::metrics::Metrics;
use crate::pg_cluster::{Cluster, ClusterError, Durability};
use crate::replicas::{Reads, Replica};
use crate::settings::Settings;
use crate::state::AppState;
use crate::store::migrate::Migrate;
use crate::storefront_cache::StoreCache;
use crate::{demo, http, routes};
use actix::Arbiter;
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use rampart_actors::{
    ActorSpec, BreakerBoard, BreakerSettings, Breakers, Cache, CacheSettings, ConcurrencyLimit, Db,
    DbError, DbGauge, DbProbe, DbSettings, Handle, Jobs, JobsBoard, JobsSettings, LimitClass,
    LimitSettings, LimitSnapshot, Limiter, MemoryBoard, MemoryMonitor, MemorySettings, RateLimits,
    RedisLink, RestartPolicy, SharedTier, SharedTierSettings, Tree,
};
use std::net::TcpListener;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

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
    Blocking(String),
}

/// Runs blocking work (`pg_ctl`, file I/O) on the blocking pool, off the async runtime's threads.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StartupError> {
    actix_web::rt::task::spawn_blocking(work)
        .await
        .map_err(|e| StartupError::Blocking(e.to_string()))
}

/// The supervised side of the service: the cluster (when local), the supervision tree and the
/// handles to its actors. `rampart migrate` and `rampart merchant create` use it without the
/// HTTP server.
pub struct Backend {
    pub db: Handle<Db>,
    /// Catalog reads: a fresh replica when there is one, else the primary.
    pub reads: Reads,
    /// Readiness' own lane to PostgreSQL: never queued behind requests.
    pub probe: Handle<DbProbe>,
    /// Pool usage, read without a message.
    pub gauge: DbGauge,
    pub cache: StoreCache,
    /// Every dependency's circuit, read without a message.
    pub breakers: BreakerBoard,
    pub circuits: Handle<Breakers>,
    /// The rate limits, decided on the caller's thread (`None`: `rate_limit.enabled` is off).
    pub limits: Option<RateLimits>,
    /// The concurrency limits of the edge, which the memory monitor turns to shedding.
    pub concurrency: EdgeLimits,
    pub memory: MemoryBoard,
    /// The job queues' counters on this instance (empty when it does not dispatch).
    pub jobs: JobsBoard,
    /// Every actor's handle, for tests and tools.
    pub handles: Handles,
    pub tree: Arc<Tree>,
    db_arbiter: Arbiter,
    jobs_arbiter: Option<Arbiter>,
    cluster: Option<Cluster>,
}

impl Backend {
    /// Starts the supervision tree. In start order (stopped in reverse), each child with its
    /// arbiter, mailbox and restart intensity (`actors.<name>.*`, at most `max_restarts` within
    /// `restart_window_secs`, then failed and reported by readiness):
    ///
    /// | actor      | arbiter | mailbox                        | owns                              |
    /// |------------|---------|--------------------------------|-----------------------------------|
    /// | `breakers` | main    | `actors.breakers.mailbox`      | every dependency's circuit        |
    /// | `db`       | db      | `actors.db.mailbox`            | the PostgreSQL pool               |
    /// | `db_probe` | db      | 16                             | readiness' own connection         |
    /// | `db_replica_<n>` | db | `actors.db.mailbox`            | a read replica's pool             |
    /// | `cache`    | db      | `actors.cache.mailbox`         | the in-process and Redis tiers    |
    /// | `limiter`  | main    | `actors.limiter.mailbox`       | the rate limits (local or Redis)  |
    /// | `memory`   | main    | `actors.memory.mailbox`        | memory and lag samples, shedding  |
    /// | `jobs`     | jobs    | `actors.jobs.mailbox`          | job dispatch (with `dispatch`)    |
    ///
    /// `dispatch`: whether this process runs the job queues (`serve` with `jobs.enabled`; the
    /// one-shot commands never do). The dispatcher starts after the migrations it relies on.
    pub async fn start(settings: &Settings, dispatch: bool) -> Result<Self, StartupError> {
        let (pg, cluster) = database(settings).await?;
        let mut tree = Tree::new();
        let spec = |name, limits: crate::settings::ActorLimits| {
            ActorSpec::new(name)
                .mailbox(limits.mailbox)
                .restart(RestartPolicy {
                    max_restarts: limits.max_restarts,
                    within: Duration::from_secs(limits.restart_window_secs),
                })
                .call_deadline(Settings::ms(settings.actors.call_deadline_ms))
        };
        let actors = &settings.actors;

        // The circuits exist before the actors that call through them.
        let board = BreakerBoard::new();
        let pg_circuit = board.register("postgres", settings.breakers.breaker());
        let redis = redis_link(settings, &board)?;
        let breakers_board = board.clone();
        let defaults = settings.breakers.breaker();
        let max_circuits = settings.breakers.max_circuits;
        let circuits = tree.start(&spec("breakers", actors.breakers), None, move |sup| {
            Breakers::new(breakers_board, defaults, max_circuits, sup)
        });

        let db_settings = DbSettings {
            pg: pg.clone(),
            ..db_settings_for(settings)
        };
        let gauge = DbGauge::new(&db_settings);
        // The pool coordinates every worker's queries, so it runs once, on a thread of its own.
        let db_arbiter = Arbiter::new();
        let db_gauge = gauge.clone();
        let slow_query =
            (settings.log.slow_query_ms > 0).then(|| Settings::ms(settings.log.slow_query_ms));
        let db = tree.start(
            &spec("db", actors.db),
            Some(&db_arbiter.handle()),
            move |sup| {
                let db = Db::new(db_settings, db_gauge, sup).with_circuit(pg_circuit);
                match slow_query {
                    Some(at_least) => db.with_slow_query(at_least),
                    None => db,
                }
            },
        );
        // Beside Db, with its own connection and mailbox: a Db busy with traffic must not make
        // the instance look unready.
        let probe_spec = ActorSpec::new("db_probe")
            .mailbox(16)
            .call_deadline(Settings::ms(settings.health.ready_timeout_ms));
        let listen = pg.clone();
        let probe = tree.start(&probe_spec, Some(&db_arbiter.handle()), move |sup| {
            DbProbe::new(pg, sup)
        });
        let mut replicas = Vec::new();
        for (n, url) in settings.database.replica_urls.iter().enumerate() {
            let name = format!("postgres_replica_{n}");
            let circuit = board.register(&name, settings.breakers.breaker());
            let replica_settings = DbSettings {
                pg: pg_config(settings, url.expose())?,
                ..db_settings_for(settings)
            };
            let replica_gauge = DbGauge::new(&replica_settings);
            // Started once per process: the name lives as long as the tree.
            let actor_name: &'static str = Box::leak(format!("db_replica_{n}").into_boxed_str());
            let for_actor = circuit.clone();
            let handle = tree.start(
                &spec(actor_name, actors.db),
                Some(&db_arbiter.handle()),
                move |sup| Db::new(replica_settings, replica_gauge, sup).with_circuit(for_actor),
            );
            replicas.push(Replica::new(name, handle, circuit));
        }
        // Beside Db: its loads call Db on the same thread; its hits never reach it.
        let cache_settings = CacheSettings {
            max_entries: settings.cache.max_entries,
            max_bytes: settings.cache.max_bytes,
            stale_for: Duration::from_secs(settings.cache.stale_if_error_secs),
        };
        let reader = Cache::reader(&cache_settings);
        let shared = redis.clone().map(|link| {
            SharedTier::new(
                link,
                SharedTierSettings {
                    channel: "rampart:invalidations".to_owned(),
                    resubscribe_after: Settings::ms(settings.redis.breaker_open_ms),
                },
                &uuid::Uuid::new_v4().simple().to_string(),
            )
        });
        let (tier, shared_for_actor) = (reader.clone(), shared.clone());
        let cache = tree.start(
            &spec("cache", actors.cache),
            Some(&db_arbiter.handle()),
            move |sup| Cache::new(cache_settings, tier, shared_for_actor, sup),
        );
        let cache = StoreCache::new(cache, reader.clone(), shared, settings);
        let reads = Reads::new(db.clone(), replicas, reader, settings);
        db_arbiter.spawn(reads.clone().track());

        let limits = settings
            .rate_limit
            .enabled
            .then(|| RateLimits::new(limit_classes(settings), settings.rate_limit.max_keys, redis));
        let limiter = limits.clone().map(|limits| {
            tree.start(&spec("limiter", actors.limiter), None, move |sup| {
                Limiter::new(limits, Duration::from_secs(1), sup)
            })
        });

        let concurrency = EdgeLimits {
            reads: ConcurrencyLimit::new(LimitSettings {
                adaptive: false,
                ..overload(settings)
            }),
            writes: ConcurrencyLimit::new(writes_lane(settings)),
        };
        let m = &settings.memory;
        let memory_settings = MemorySettings {
            interval: Settings::ms(m.check_interval_ms),
            soft_bytes: m.soft_limit_mb << 20,
            hard_bytes: m.hard_limit_mb << 20,
            window: m.window_samples,
            leak_bytes_per_sec: (m.leak_mb_per_min << 20) as f64 / 60.0,
            shrink_to: f64::from(m.cache_keep_percent) / 100.0,
        };
        let memory_board = MemoryBoard::new();
        let board_for_monitor = memory_board.clone();
        let limits_for_monitor = vec![concurrency.reads.clone(), concurrency.writes.clone()];
        let cache_for_monitor = Some(cache.handle.clone());
        let db_thread = db_arbiter.handle();
        let memory = tree.start(&spec("memory", actors.memory), None, move |sup| {
            MemoryMonitor::new(
                memory_settings,
                board_for_monitor,
                limits_for_monitor,
                cache_for_monitor,
                sup,
            )
            .watch("db", &db_thread, Duration::from_millis(250))
        });

        let applied = db
            .run_within(Migrate, Duration::from_secs(120))
            .await
            .map_err(StartupError::Migrate)?;
        for name in applied {
            tracing::info!(migration = %name, "migration applied");
        }

        let queues: std::collections::BTreeMap<String, usize> = crate::jobs::KINDS
            .iter()
            .map(|k| {
                let n = settings.jobs.concurrency.get(k.queue).copied().unwrap_or(1);
                (k.queue.to_owned(), n as usize)
            })
            .collect();
        let none = std::collections::BTreeMap::new();
        let jobs_board = JobsBoard::new(if dispatch { &queues } else { &none });
        let (jobs, jobs_arbiter) = if dispatch {
            let j = &settings.jobs;
            let jobs_settings = JobsSettings {
                instance: format!(
                    "{}-{}",
                    std::process::id(),
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                ),
                queues,
                lease: Duration::from_secs(j.lease_secs),
                poll_interval: Settings::ms(j.poll_interval_ms),
                backoff_base: Settings::ms(j.backoff_base_ms),
                backoff_max: Settings::ms(j.backoff_max_ms),
                // What `pg_config` gives every session (0: no limit).
                session_idle_limit: (settings.database.idle_in_transaction_timeout_ms > 0)
                    .then(|| Settings::ms(settings.database.idle_in_transaction_timeout_ms)),
                session_statement_limit: (settings.database.statement_timeout_ms > 0)
                    .then(|| Settings::ms(settings.database.statement_timeout_ms)),
                // Under the tree's five seconds per child at shutdown.
                drain: Duration::from_secs(4),
                listen: Some(listen),
                busy: (j.yield_at_writes > 0).then(|| {
                    let (writes, at) = (concurrency.writes.clone(), j.yield_at_writes);
                    Arc::new(move || writes.snapshot().inflight >= at) as rampart_actors::Busy
                }),
            };
            let runners = crate::jobs::runners(crate::jobs::JobContext {
                db: db.clone(),
                settings: Arc::new(settings.clone()),
                breakers: board.clone(),
                circuits: circuits.clone(),
            });
            // Job runs (deliveries, report reads) never share a thread with requests or the pool.
            let arbiter = Arbiter::new();
            let (db_for_jobs, board_for_jobs) = (db.clone(), jobs_board.clone());
            let handle = tree.start(
                &spec("jobs", actors.jobs),
                Some(&arbiter.handle()),
                move |sup| Jobs::new(db_for_jobs, jobs_settings, runners, board_for_jobs, sup),
            );
            (Some(handle), Some(arbiter))
        } else {
            (None, None)
        };
        let handles = Handles {
            db: db.clone(),
            probe: probe.clone(),
            cache: cache.handle.clone(),
            breakers: circuits.clone(),
            limiter,
            memory,
            jobs,
        };
        Ok(Self {
            db,
            reads,
            probe,
            gauge,
            cache,
            handles,
            breakers: board,
            circuits,
            limits,
            concurrency,
            memory: memory_board,
            jobs: jobs_board,
            tree: Arc::new(tree),
            db_arbiter,
            jobs_arbiter,
            cluster,
        })
    }

    /// Stops the actors (last started first), their arbiter, then the local cluster.
    pub async fn shutdown(self) {
        self.tree.stop().await;
        if let Some(jobs) = self.jobs_arbiter {
            jobs.stop();
        }
        self.db_arbiter.stop();
        let Some(cluster) = self.cluster.filter(Cluster::is_owned) else {
            return;
        };
        match blocking(move || cluster.stop()).await {
            Ok(Ok(())) => tracing::info!("local PostgreSQL stopped"),
            Ok(Err(e)) => tracing::warn!(error = %e, "stopping local PostgreSQL"),
            Err(e) => tracing::warn!(error = %e, "stopping local PostgreSQL"),
        }
    }

    /// The embedded cluster, when the service runs its own.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }
}

/// The pool settings every `Db` shares, but the server it connects to.
fn db_settings_for(settings: &Settings) -> DbSettings {
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

async fn database(
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
fn redis_link(
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

/// The edge's concurrency limit: adaptive, fixed, or (disabled) out of reach.
fn overload(settings: &Settings) -> LimitSettings {
    let o = &settings.overload;
    if !o.enabled {
        return LimitSettings {
            adaptive: false,
            initial: usize::MAX / 2,
            min: usize::MAX / 2,
            max: usize::MAX / 2,
        };
    }
    LimitSettings {
        adaptive: o.adaptive,
        initial: o.initial_limit,
        min: o.min_limit,
        max: o.max_limit,
    }
}

/// The writes' lane: adaptive between bounds the database sets. Never below the pool's
/// connections (fewer writes in flight than connections leaves the database idle, whatever the
/// latency says), never above what the `Db` actor holds (its running commands and its mailbox):
/// beyond that the excess waits at the edge, in order and against its deadline, rather than
/// being refused by a full mailbox.
fn writes_lane(settings: &Settings) -> LimitSettings {
    let lane = overload(settings);
    if !lane.adaptive {
        return lane;
    }
    let held = settings.database.max_inflight + settings.actors.db.mailbox;
    let max = lane.max.min(held).max(1);
    LimitSettings {
        min: lane.min.max(settings.database.max_connections).min(max),
        max,
        initial: lane.initial.min(max),
        ..lane
    }
}

/// The edge's concurrency limits, one per lane, because one latency baseline for both would shed
/// the fast lane by the slow one's queue. Writes (a database transaction each) adapt to their
/// latency. Reads are mostly answered from memory: their latency measures the CPU, which shedding
/// them would not free, so their limit stays at `overload.initial_limit` (a read that misses the
/// cache meets the `Db` actor's bounded queue, which refuses at once when full).
#[derive(Clone)]
pub struct EdgeLimits {
    pub reads: ConcurrencyLimit,
    pub writes: ConcurrencyLimit,
}

impl EdgeLimits {
    pub fn snapshot(&self) -> [(&'static str, LimitSnapshot); 2] {
        [
            ("reads", self.reads.snapshot()),
            ("writes", self.writes.snapshot()),
        ]
    }
}

/// The handle of every actor of the tree.
#[derive(Clone)]
pub struct Handles {
    pub db: Handle<Db>,
    pub probe: Handle<DbProbe>,
    pub cache: Handle<Cache>,
    pub breakers: Handle<Breakers>,
    pub limiter: Option<Handle<Limiter>>,
    pub memory: Handle<MemoryMonitor>,
    /// `None`: this process does not dispatch jobs.
    pub jobs: Option<Handle<Jobs>>,
}

/// The rate limit classes of `rate_limit.classes.*`, by the names the edge asks for.
fn limit_classes(settings: &Settings) -> Vec<LimitClass> {
    let c = &settings.rate_limit.classes;
    [
        ("storefront", c.storefront),
        ("checkout", c.checkout),
        ("merchant", c.merchant),
        ("unauthenticated", c.unauthenticated),
    ]
    .into_iter()
    .map(|(name, class)| LimitClass {
        name: name.to_owned(),
        limit: class.limit,
        period: Duration::from_secs(class.period_secs),
    })
    .collect()
}

/// Cursors must verify on every instance: the configured secret (required in production), else
/// a random key for this process alone. Never derived from another secret.
fn cursor_key(settings: &Settings) -> CursorKey {
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

/// Every ten minutes, keys past their 24 hours are deleted. Until the jobs queue lands this runs
/// on each instance; the DELETE is idempotent, so several instances do no harm.
fn prune_idempotency_keys(db: Handle<Db>) {
    actix_web::rt::spawn(async move {
        // The first run one period after start: a start is busy enough, and tests counting the
        // database's commands must not meet a stray DELETE.
        let period = Duration::from_secs(600);
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            every.tick().await;
            match db.run(crate::store::orders::PruneIdempotencyKeys).await {
                Ok(n) if n > 0 => tracing::info!(deleted = n, "expired idempotency keys pruned"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning idempotency keys"),
            }
        }
    });
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

pub struct Application {
    port: u16,
    management_port: Option<u16>,
    /// Refreshes readiness' sample until the server stops.
    sampler: crate::probes::Sampler,
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
                demo::ensure(&backend.db, &settings, backend.cluster().is_some())
                    .await
                    .map_err(StartupError::Demo)?,
            )
        } else {
            None
        };
        // Readiness answers from the first sample as soon as the port opens.
        let checks = crate::probes::Checks::new(
            backend.probe.clone(),
            backend.cache.shared.clone(),
            &settings,
        );
        let sampled = crate::probes::Sampled::first(&checks).await;
        let (listener, port) = bind(&settings.server.host, settings.server.port)?;
        let management = match settings.server.management_port {
            Some(m) => Some(bind(&settings.server.host, m)?),
            None => None,
        };
        let ports = http::ports::Ports {
            management: management.as_ref().map(|(_, port)| *port),
        };

        let state = web::Data::new(AppState {
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
            settings: Arc::clone(&settings),
            cursor_key: cursor_key(&settings),
            known_keys: http::auth::KnownKeys::default(),
        });
        let metrics = web::Data::new(Metrics::new()?);
        let body_limit = settings.server.body_limit_bytes;
        let mut server = HttpServer::new(move || {
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
        .shutdown_timeout(settings.server.shutdown_timeout_secs);
        if settings.server.workers > 0 {
            server = server.workers(settings.server.workers);
        }
        server = server
            .listen(listener)
            .map_err(|source| StartupError::Bind {
                addr: format!("port {port}"),
                source,
            })?;
        if let Some((listener, management)) = management {
            server = server
                .listen(listener)
                .map_err(|source| StartupError::Bind {
                    addr: format!("port {management}"),
                    source,
                })?;
        }
        let server = server.run();
        prune_idempotency_keys(backend.db.clone());
        let sampler = sampled.refresh(checks, Settings::ms(settings.health.refresh_ms));
        Ok(Self {
            port,
            management_port: ports.management,
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
