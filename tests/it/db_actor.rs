//! The `Db` actor against a real PostgreSQL: typed commands, panics, overload, outages.

use crate::support::{wait_until, Select1, TestApp, TestPg, ADMIN_TOKEN};
use futures_util::future::join_all;
use rampart_actors::{ActorState, Conn, DbCommand, DbError};
use serde_json::json;
use std::time::Duration;

struct Panics;
impl DbCommand for Panics {
    type Output = ();
    async fn run(self, client: &mut Conn) -> Result<(), DbError> {
        client.simple_query("SELECT 1").await?;
        panic!("a bug inside a database command");
    }
}

struct Sleep(f64);
impl DbCommand for Sleep {
    type Output = ();
    async fn run(self, client: &mut Conn) -> Result<(), DbError> {
        client.execute("SELECT pg_sleep($1)", &[&self.0]).await?;
        Ok(())
    }
}

struct InsertDuplicateMerchantKey;
impl DbCommand for InsertDuplicateMerchantKey {
    type Output = ();
    async fn run(self, client: &mut Conn) -> Result<(), DbError> {
        for _ in 0..2 {
            client
                .execute(
                    "INSERT INTO merchants (id, name, webhook_secret, api_key_hash, api_key_prefix, order_sequence)
                     VALUES (gen_random_uuid(), 'x', 's', '\\x01', 'p', 'seq')",
                    &[],
                )
                .await?;
        }
        Ok(())
    }
}

#[actix_rt::test]
async fn a_panic_inside_a_db_command_restarts_db_and_the_next_command_succeeds() {
    let app = TestApp::spawn().await;
    let err = app
        .db
        .run(Panics)
        .await
        .expect_err("the panic reaches the caller as an error");
    assert!(matches!(err, DbError::Internal), "{err:?}");
    app.db
        .run(Select1)
        .await
        .expect("the rebuilt pool serves the next command");
    let stats = app.db.stats().snapshot();
    assert_eq!(stats.restarts, 1);
    assert_eq!(stats.state, ActorState::Running);
    assert_eq!(app.get("/health/ready").await.status, 200);
}

#[actix_rt::test]
async fn restarts_beyond_the_intensity_mark_db_failed_and_readiness_says_so() {
    let app = TestApp::builder()
        .configure(|s| {
            s.actors.db.max_restarts = 2;
            s.actors.db.restart_window_secs = 60;
        })
        .spawn()
        .await;
    for _ in 0..3 {
        assert!(matches!(app.db.run(Panics).await, Err(DbError::Internal)));
    }
    // Readiness turns unready once supervision has marked the actor failed.
    wait_until("readiness is 503", Duration::from_secs(5), async || {
        app.get("/health/ready").await.status == 503
    })
    .await;
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, 503, "{:?}", app.db.stats().snapshot());
    assert_eq!(app.db.stats().state(), ActorState::Failed);
    let body = ready.json();
    assert_eq!(body["status"], "unready");
    assert_eq!(body["checks"]["actor.db"]["state"], "failed");
    assert_eq!(body["checks"]["actor.db"]["status"], "down");
    // The process still serves what needs no database.
    assert_eq!(app.get("/health").await.status, 200);
}

#[actix_rt::test]
async fn constraint_violations_come_back_typed_with_their_name() {
    let app = TestApp::spawn().await;
    match app.db.run(InsertDuplicateMerchantKey).await {
        Err(DbError::Constraint { name, .. }) => assert_eq!(name, "merchants_api_key_hash_key"),
        other => panic!("expected a constraint error, got {other:?}"),
    }
}

#[actix_rt::test]
async fn a_full_db_queue_refuses_at_once_with_503_and_retry_after() {
    let app = TestApp::builder()
        .configure(|s| {
            s.database.max_inflight = 1;
            s.actors.db.mailbox = 4;
            // The edge's line would hold the burst in order before it reaches the Db actor
            // (its writes' limit stops at what the actor holds); this is the actor's own bound.
            s.overload.enabled = false;
        })
        .spawn()
        .await;
    // One slow command fills the single in-flight slot, so the actor holds its mailbox.
    let db = app.db.clone();
    let blocker = actix_rt::spawn(async move { db.run(Sleep(1.5)).await });
    wait_until(
        "the slow command holds the slot",
        Duration::from_secs(5),
        async || app.gauge.snapshot().inflight == 1,
    )
    .await;

    let bodies: Vec<_> = (0..100).map(|i| json!({"name": format!("m{i}")})).collect();
    let replies = join_all(
        bodies
            .iter()
            .map(|b| app.post_json("/api/v1/admin/merchants", Some(ADMIN_TOKEN), b)),
    )
    .await;
    let unavailable: Vec<_> = replies.iter().filter(|r| r.status == 503).collect();
    let created = replies.iter().filter(|r| r.status == 201).count();
    assert_eq!(unavailable.len() + created, 100, "only 201 or 503");
    let mut refused = 0;
    for reply in &unavailable {
        let problem = reply.problem(503);
        assert!(reply
            .header("retry-after")
            .is_some_and(|v| v.parse::<u32>().is_ok()));
        // The few admitted behind the blocker may still run out of their deadline under load.
        if problem["type"] == "/problems/overloaded" {
            refused += 1;
        }
    }
    assert!(
        refused >= 90,
        "most are refused at once: {refused} refused, {created} created"
    );
    blocker
        .await
        .expect("join")
        .expect("the slow command itself completes");
    assert!(app.db.stats().snapshot().refused >= 90);
}

#[actix_rt::test]
async fn postgres_stopped_and_started_again_turns_readiness_503_then_200_without_a_restart() {
    let pg: &'static TestPg = Box::leak(Box::new(TestPg::dedicated()));
    let app = TestApp::builder()
        .on(pg)
        .configure(|s| s.health.ready_timeout_ms = 1000)
        .spawn()
        .await;
    assert_eq!(app.get("/health/ready").await.status, 200);

    pg.cluster.stop_with("immediate").expect("stop PostgreSQL");
    // The next background sample (every `health.refresh_ms`, each check within
    // `health.ready_timeout_ms`) finds it down.
    wait_until(
        "readiness sees PostgreSQL down",
        Duration::from_secs(5),
        async || app.get("/health/ready").await.status == 503,
    )
    .await;
    let started = std::time::Instant::now();
    let down = app.get("/health/ready").await;
    assert_eq!(down.status, 503);
    let postgres = &down.json()["checks"]["postgres"];
    assert_eq!(postgres["status"], "down");
    assert!(postgres["reason"].is_string(), "{postgres}");
    let text = String::from_utf8_lossy(&down.body).to_lowercase();
    for driver_words in [
        "error connecting",
        "connection refused",
        "os error",
        "db error",
    ] {
        assert!(!text.contains(driver_words), "no driver message: {text}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "readiness answers from the sample, without waiting for PostgreSQL"
    );
    assert_eq!(
        app.get("/health").await.status,
        200,
        "liveness does not depend on PostgreSQL"
    );

    pg.cluster.start_again().expect("start PostgreSQL");
    wait_until(
        "ready again once PostgreSQL is back",
        Duration::from_secs(10),
        async || app.get("/health/ready").await.status == 200,
    )
    .await;
    assert_eq!(
        app.db.stats().snapshot().restarts,
        0,
        "no restart was needed"
    );
}

/// Holds its slot, then panics.
struct PanicsAfter(f64);
impl DbCommand for PanicsAfter {
    type Output = ();
    async fn run(self, client: &mut Conn) -> Result<(), DbError> {
        client.execute("SELECT pg_sleep($1)", &[&self.0]).await?;
        panic!("a bug after a slow query");
    }
}

#[actix_rt::test]
async fn a_panic_in_one_command_does_not_fail_the_commands_beside_it() {
    let app = TestApp::builder()
        .configure(|s| {
            s.database.max_inflight = 2;
            s.database.max_connections = 2;
        })
        .spawn()
        .await;
    let (db, other) = (app.db.clone(), app.db.clone());
    let panicking = actix_rt::spawn(async move { db.run(PanicsAfter(0.3)).await });
    let running = actix_rt::spawn(async move { other.run(Sleep(0.6)).await });
    wait_until(
        "both commands hold a slot",
        Duration::from_secs(5),
        async || app.gauge.snapshot().inflight == 2,
    )
    .await;
    // These wait for a slot while the panic happens.
    let queued = join_all((0..8).map(|_| app.db.run(Select1))).await;
    assert!(matches!(
        panicking.await.expect("join"),
        Err(DbError::Internal)
    ));
    running
        .await
        .expect("join")
        .expect("the command running beside the panic completes");
    for result in queued {
        result.expect("a command queued beside the panic completes");
    }
    assert_eq!(app.db.stats().snapshot().restarts, 1);
}

#[actix_rt::test]
async fn readiness_and_metrics_answer_while_every_db_slot_and_the_queue_are_full() {
    let app = TestApp::builder()
        .configure(|s| {
            s.database.max_inflight = 2;
            s.database.max_connections = 2;
            s.actors.db.mailbox = 8;
        })
        .spawn()
        .await;
    let mut blockers = Vec::new();
    for admitted in 1..=10 {
        let db = app.db.clone();
        blockers.push(actix_rt::spawn(async move { db.run(Sleep(2.0)).await }));
        wait_until(
            "the command is admitted",
            Duration::from_secs(5),
            async || {
                let pool = app.gauge.snapshot();
                pool.inflight + pool.queued == admitted
            },
        )
        .await;
    }
    assert!(
        matches!(app.db.run(Select1).await, Err(DbError::Overloaded)),
        "requests are refused now"
    );
    let ready = app.get("/health/ready").await;
    ready.assert_status(200);
    assert_eq!(ready.json()["checks"]["postgres"]["status"], "up");
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body).expect("utf8");
    assert!(text.contains("db_commands_in_flight 2"), "{text}");
    assert!(text.contains("db_commands_queued 8"), "{text}");
    for blocker in blockers {
        let _ = blocker.await;
    }
}

/// What PostgreSQL says of this pooled session's settings and prepared statements.
struct SessionFacts;
impl DbCommand for SessionFacts {
    type Output = (String, i64);
    async fn run(self, client: &mut Conn) -> Result<(String, i64), DbError> {
        let idle = client
            .query_one("SHOW idle_in_transaction_session_timeout", &[])
            .await?
            .get(0);
        let prepared = client
            .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
            .await?
            .get(0);
        Ok((idle, prepared))
    }
}

#[actix_rt::test]
async fn sessions_carry_the_idle_transaction_timeout_and_tcp_keepalives() {
    let app = TestApp::builder()
        .configure(|s| {
            s.database.idle_in_transaction_timeout_ms = 1500;
            s.database.tcp_keepalive_secs = 9;
        })
        .spawn()
        .await;
    let (idle, _) = app.db.run(SessionFacts).await.expect("facts");
    assert_eq!(idle, "1500ms");
    let mut settings = rampart::settings::Settings::for_tests().expect("settings");
    settings.database.tcp_keepalive_secs = 9;
    let pg = rampart::startup::pg_config(&settings, &app.database_url).expect("config");
    assert!(pg.get_keepalives());
    assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(9));
}

/// A service whose runtime ends without a graceful stop (a test returning, a start failing
/// halfway) keeps none of its pool's connections: the suite runs one service per test against
/// one cluster, whose `max_connections` must not fill with sessions nobody will use.
#[actix_rt::test]
async fn a_service_dropped_without_a_graceful_stop_closes_its_database_connections() {
    let url = TestPg::shared().fresh_database().await;
    let database = url.rsplit('/').next().unwrap().to_owned();
    let for_service = url.clone();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let app = TestApp::builder().database(&for_service).spawn().await;
            let reply = app.get("/health/ready").await;
            assert_eq!(reply.status, 200);
            app.db.run(Select1).await.expect("a command through Db");
            // The runtime ends here with the service still running.
        })
    })
    .join()
    .expect("the service's thread");

    let admin = crate::support::connect(&TestPg::shared().cluster.url("postgres")).await;
    let open = async || -> i64 {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&database],
            )
            .await
            .expect("count sessions")
            .get(0)
    };
    wait_until(
        "the dropped service's sessions are closed",
        Duration::from_secs(10),
        async || open().await == 0,
    )
    .await;
}
