//! The supervised side of the service: the supervision tree in start order, each child with its
//! arbiter, mailbox and restart intensity, and the handles to its actors.

use crate::blocking::blocking;
use crate::pg_cluster::Cluster;
use crate::replicas::{Reads, Replica};
use crate::settings::Settings;
use crate::startup::database::{database, db_settings_for, pg_config, redis_link};
use crate::startup::error::StartupError;
use crate::startup::guards::{edge_limits, limit_classes, memory_settings};
use crate::state::EdgeLimits;
use crate::store::migrate::Migrate;
use crate::storefront_cache::StoreCache;
use actix::Arbiter;
use rampart_actors::{
    ActorSpec, BreakerBoard, Breakers, Cache, CacheSettings, Db, DbGauge, DbProbe, DbSettings,
    Handle, Jobs, JobsBoard, JobsSettings, Limiter, MemoryBoard, MemoryMonitor, RateLimits,
    RestartPolicy, SharedTier, SharedTierSettings, Tree,
};
use std::sync::Arc;
use std::time::Duration;

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
    threads: Threads,
    cluster: Option<Cluster>,
}

/// The backend's own threads, stopped when dropped, so that a backend dropped without
/// `shutdown` (a start that failed halfway, a test whose runtime ended) ends them and, with
/// them, the pool's connections, whatever else still holds a handle to them.
struct Threads {
    db: Arbiter,
    jobs: Option<Arbiter>,
}

impl Drop for Threads {
    fn drop(&mut self) {
        if let Some(jobs) = &self.jobs {
            jobs.stop();
        }
        self.db.stop();
    }
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
        let mut threads = Threads {
            db: Arbiter::new(),
            jobs: None,
        };
        let db_arbiter = threads.db.handle();
        let db_gauge = gauge.clone();
        let slow_query =
            (settings.log.slow_query_ms > 0).then(|| Settings::ms(settings.log.slow_query_ms));
        let db = tree.start(&spec("db", actors.db), Some(&db_arbiter), move |sup| {
            let db = Db::new(db_settings, db_gauge, sup).with_circuit(pg_circuit);
            match slow_query {
                Some(at_least) => db.with_slow_query(at_least),
                None => db,
            }
        });
        // Beside Db, with its own connection and mailbox: a Db busy with traffic must not make
        // the instance look unready.
        let probe_spec = ActorSpec::new("db_probe")
            .mailbox(16)
            .call_deadline(Settings::ms(settings.health.ready_timeout_ms));
        let listen = pg.clone();
        let probe = tree.start(&probe_spec, Some(&db_arbiter), move |sup| {
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
                Some(&db_arbiter),
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
                    keepalive: Settings::ms(settings.redis.keepalive_ms),
                },
                &uuid::Uuid::new_v4().simple().to_string(),
            )
        });
        let (tier, shared_for_actor) = (reader.clone(), shared.clone());
        let cache = tree.start(
            &spec("cache", actors.cache),
            Some(&db_arbiter),
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

        let concurrency = edge_limits(settings);
        let memory_settings = memory_settings(settings);
        let memory_board = MemoryBoard::new();
        let board_for_monitor = memory_board.clone();
        let limits_for_monitor = vec![concurrency.reads.clone(), concurrency.writes.clone()];
        let cache_for_monitor = Some(cache.handle.shrinker());
        let db_thread = db_arbiter.clone();
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

        let queues: std::collections::BTreeMap<String, usize> = crate::jobs::kinds::KINDS
            .iter()
            .map(|k| {
                let n = settings.jobs.concurrency.get(k.queue).copied().unwrap_or(1);
                (k.queue.to_owned(), n as usize)
            })
            .collect();
        let none = std::collections::BTreeMap::new();
        let jobs_board = JobsBoard::new(if dispatch { &queues } else { &none });
        let jobs = if dispatch {
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
            let runners = crate::jobs::runners(crate::jobs::context::JobContext {
                db: db.clone(),
                settings: Arc::new(settings.clone()),
                breakers: board.clone(),
                circuits: circuits.clone(),
            });
            // Job runs (deliveries, report reads) never share a thread with requests or the pool.
            let arbiter = threads.jobs.insert(Arbiter::new()).handle();
            let (db_for_jobs, board_for_jobs) = (db.clone(), jobs_board.clone());
            let handle = tree.start(&spec("jobs", actors.jobs), Some(&arbiter), move |sup| {
                Jobs::new(db_for_jobs, jobs_settings, runners, board_for_jobs, sup)
            });
            Some(handle)
        } else {
            None
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
            threads,
            cluster,
        })
    }

    /// Stops the actors (last started first), their arbiter, then the local cluster.
    pub async fn shutdown(self) {
        self.tree.stop().await;
        drop(self.threads);
        let Some(cluster) = self.cluster.filter(Cluster::is_owned) else {
            return;
        };
        match blocking(move || cluster.stop()).await {
            Ok(Ok(())) => tracing::info!("local PostgreSQL stopped"),
            Ok(Err(e)) => tracing::warn!(error = %e, "stopping local PostgreSQL"),
            Err(e) => tracing::warn!(error = %StartupError::from(e), "stopping local PostgreSQL"),
        }
    }

    /// The embedded cluster, when the service runs its own.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
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

/// Every ten minutes, keys past their 24 hours are deleted. Until the jobs queue lands this runs
/// on each instance; the DELETE is idempotent, so several instances do no harm.
pub fn prune_idempotency_keys(db: Handle<Db>) {
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
