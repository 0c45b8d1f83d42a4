//! Ops endpoints that cost nothing: readiness and metrics answer from state sampled in the
//! background (`health.refresh_ms`), so any number of probes adds no database work; the
//! management port (`server.management_port`) keeps `/metrics` and ops stats off the public
//! one; one merchant's failing webhook host never makes the instance `degraded`, and the public
//! readiness body names no webhook host.

use crate::support::{wait_until, TestApp, ADMIN_TOKEN};
use futures_util::future::join_all;
use serde_json::json;
use std::time::Duration;

/// Commands the `Db` actor and readiness' own `DbProbe` have handled.
fn db_commands(app: &TestApp) -> (u64, u64) {
    (
        app.db.stats().snapshot().handled,
        app.actors.probe.stats().snapshot().handled,
    )
}

#[actix_rt::test]
async fn five_hundred_concurrent_readiness_probes_answer_200_and_add_no_database_command() {
    // No background sample falls inside the burst: every command counted is a probe's.
    let app = TestApp::builder()
        .configure(|s| s.health.refresh_ms = 3_600_000)
        .spawn()
        .await;
    let before = db_commands(&app);
    let replies = join_all((0..500).map(|_| app.get("/health/ready"))).await;
    for reply in &replies {
        reply.assert_status(200);
        assert_eq!(reply.json()["status"], "ready");
        assert_eq!(reply.json()["checks"]["postgres"]["status"], "up");
    }
    // Scrapes and ops stats read the same sample.
    let scrapes = join_all((0..50).map(|_| app.get("/metrics"))).await;
    assert!(scrapes.iter().all(|r| r.status == 200));
    let stats = app
        .send(
            app.client
                .get(app.url("/api/v1/ops/stats"))
                .bearer_auth(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(stats.status, 200);
    assert!(
        stats.json()["jobs"]["queues"].is_array(),
        "{}",
        stats.json()
    );
    assert_eq!(
        db_commands(&app),
        before,
        "(Db, DbProbe) commands: probes and scrapes send none"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn the_sample_is_refreshed_in_the_background_every_refresh_interval() {
    let app = TestApp::builder()
        .configure(|s| s.health.refresh_ms = 50)
        .spawn()
        .await;
    // The first sample was taken before the port opened.
    let first = app.get("/health/ready").await;
    assert_eq!(first.status, 200);
    let (_, probed) = db_commands(&app);
    assert!(probed >= 1, "the first sample: {probed}");
    wait_until(
        "the sampler has pinged again",
        Duration::from_secs(10),
        async || db_commands(&app).1 >= probed + 4,
    )
    .await;
    let age = app.get("/health/ready").await.json()["checks"]["postgres"]["checked_ms_ago"]
        .as_u64()
        .expect("checked_ms_ago");
    assert!(age < 2_000, "a recent sample: {age} ms old");
    app.stop().await;
}

#[actix_rt::test]
async fn with_a_management_port_metrics_and_ops_stats_are_served_there_only() {
    let app = TestApp::builder()
        .configure(|s| s.server.management_port = Some(0))
        .spawn()
        .await;
    let management = app.management.clone().expect("a management port");
    assert_ne!(management, app.base);
    let on = |base: &str, path: &str, admin: bool| {
        let mut req = app.client.get(format!("{base}{path}"));
        if admin {
            req = req.bearer_auth(ADMIN_TOKEN);
        }
        app.send(req, None)
    };

    // The main port: ops are unknown routes there.
    on(&app.base, "/metrics", false).await.problem(404);
    on(&app.base, "/api/v1/ops/stats", true).await.problem(404);
    // Encoded, it is still /metrics.
    on(&app.base, "/%6Detrics", false).await.problem(404);
    // The management port serves them.
    let metrics = on(&management, "/metrics", false).await;
    assert_eq!(metrics.status, 200);
    assert!(String::from_utf8_lossy(&metrics.body).contains("http_requests_total"));
    let stats = on(&management, "/api/v1/ops/stats", true).await;
    assert_eq!(stats.status, 200);
    assert!(stats.json()["actors"].is_array());
    on(&management, "/api/v1/ops/stats", false)
        .await
        .problem(401);

    // Probes answer on both.
    for base in [&app.base, &management] {
        assert_eq!(on(base, "/health", false).await.status, 200, "{base}");
        let ready = on(base, "/health/ready", false).await;
        assert_eq!(ready.status, 200, "{base}");
        assert_eq!(ready.json()["status"], "ready");
    }

    // Everything else stays on the main port.
    assert_eq!(
        on(&app.base, "/api-docs/openapi.json", false).await.status,
        200
    );
    on(&management, "/api-docs/openapi.json", false)
        .await
        .problem(404);
    on(&management, "/docs/", false).await.problem(404);
    let merchant = app.create_merchant("Ops").await;
    let store = format!("/api/v1/stores/{}/products", merchant.id);
    assert_eq!(on(&app.base, &store, false).await.status, 200);
    on(&management, &store, false).await.problem(404);
    let admin = app
        .send(
            app.client
                .post(format!("{management}/api/v1/admin/merchants"))
                .bearer_auth(ADMIN_TOKEN)
                .content_type("application/json"),
            Some(json!({"name": "Nope"}).to_string().as_bytes()),
        )
        .await;
    admin.problem(404);
    app.stop().await;
}

#[actix_rt::test]
async fn without_a_management_port_ops_stay_on_the_main_port() {
    let app = TestApp::spawn().await;
    assert!(app.management.is_none());
    assert_eq!(app.get("/metrics").await.status, 200);
    assert_eq!(app.get("/health/ready").await.status, 200);
    app.stop().await;
}

#[actix_rt::test]
async fn a_failing_webhook_host_leaves_readiness_ready_and_unnamed() {
    // A port nothing listens on: every delivery is refused at once.
    let closed = rampart::pg_cluster::free_port().expect("port");
    let app = TestApp::builder()
        .configure(|s| {
            s.jobs.enabled = true;
            s.email.outbox_dir = std::env::temp_dir()
                .join(format!("rampart-outbox-{}", uuid::Uuid::new_v4().simple()));
            s.jobs.poll_interval_ms = 100;
            s.jobs.backoff_base_ms = 50;
            s.jobs.backoff_max_ms = 200;
            s.jobs.max_attempts = 10;
            s.webhooks.allow_private_targets = true;
            s.webhooks.timeout_ms = 400;
            // The circuit opens after a few failures and stays open through the test.
            s.breakers.minimum_calls = 3;
            s.breakers.window = 3;
            s.breakers.open_ms = 600_000;
        })
        .spawn()
        .await;
    let (merchant, _) = app
        .create_merchant_with(
            &json!({"name": "Hooked", "webhook_url": format!("http://localhost:{closed}/hooks")}),
        )
        .await;
    let product = app.create_product(&merchant, "HOOK-1", 100, 100).await;
    for _ in 0..3 {
        let body = json!({"customer_email": "buyer@example.com",
            "items": [{"product_id": product["id"], "quantity": 1}]});
        assert_eq!(app.checkout(&merchant.id, &body, None).await.status, 201);
    }
    let open = r#"circuit_state{circuit="webhook:localhost"} 2"#;
    wait_until(
        "the webhook host's circuit is open",
        Duration::from_secs(30),
        async || app.metrics().await.contains(open),
    )
    .await;

    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, 200);
    let body = ready.json();
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["checks"]["webhooks"]["circuits_open"], 1, "{body}");
    let text = String::from_utf8_lossy(&ready.body);
    for host in ["localhost", "webhook:"] {
        assert!(
            !text.contains(host),
            "readiness names no webhook host: {text}"
        );
    }
    // The per-host circuit is still there for people with the admin token.
    let stats = app
        .send(
            app.client
                .get(app.url("/api/v1/ops/stats"))
                .bearer_auth(ADMIN_TOKEN),
            None,
        )
        .await
        .json();
    assert!(
        stats["breakers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "webhook:localhost" && c["state"] == "open"),
        "{}",
        stats["breakers"]
    );
    app.stop().await;
}
