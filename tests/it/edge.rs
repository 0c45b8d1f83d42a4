//! The HTTP edge: request ids, problem+json for every failure, body limits, compression, ops.

use crate::support::{TestApp, ADMIN_TOKEN};
use awc::http::Method;
use serde_json::json;

#[actix_rt::test]
async fn every_response_carries_a_request_id_echoing_a_sane_client_value() {
    let app = TestApp::spawn().await;
    let mine = app
        .send(
            app.client
                .get(app.url("/health"))
                .insert_header(("X-Request-Id", "abc-123")),
            None,
        )
        .await;
    assert_eq!(mine.header("x-request-id"), Some("abc-123"));
    let insane = app
        .send(
            app.client
                .get(app.url("/health"))
                .insert_header(("X-Request-Id", "bad id with spaces")),
            None,
        )
        .await;
    let generated = insane.header("x-request-id").expect("a new id");
    assert_ne!(generated, "bad id with spaces");
    assert!(uuid::Uuid::parse_str(generated).is_ok());
}

#[actix_rt::test]
async fn health_is_ok_and_readiness_reports_every_check() {
    let app = TestApp::spawn().await;
    let live = app.get("/health").await;
    assert_eq!(live.status, 200);
    assert_eq!(live.json(), json!({"status": "ok"}));
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, 200);
    let body = ready.json();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["postgres"]["status"], "up");
    assert_eq!(body["checks"]["redis"]["status"], "disabled");
    assert_eq!(body["checks"]["actor.db"]["state"], "running");
}

#[actix_rt::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = TestApp::spawn().await;
    let missing = app.get("/nope").await;
    let problem = missing.problem(404);
    assert_eq!(
        problem["request_id"],
        missing.header("x-request-id").expect("id")
    );
    let wrong_method = app.send(app.client.delete(app.url("/health")), None).await;
    wrong_method.problem(405);
}

#[actix_rt::test]
async fn bodies_are_checked_for_type_size_syntax_and_shape() {
    let app = TestApp::builder()
        .configure(|s| s.server.body_limit_bytes = 1024)
        .spawn()
        .await;
    let path = app.url("/api/v1/admin/merchants");
    let admin = |req: awc::ClientRequest| req.bearer_auth(ADMIN_TOKEN);

    let not_json = app
        .send(
            admin(app.client.post(&path)).content_type("text/plain"),
            Some(b"name=x"),
        )
        .await;
    not_json.problem(415);

    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(4096));
    let too_large = app
        .send(
            admin(app.client.post(&path)).content_type("application/json"),
            Some(huge.as_bytes()),
        )
        .await;
    too_large.problem(413);

    let malformed = app
        .send(
            admin(app.client.post(&path)).content_type("application/json"),
            Some(b"{\"name\": "),
        )
        .await;
    malformed.problem(400);

    let wrong_type = app
        .json_request(
            Method::POST,
            "/api/v1/admin/merchants",
            Some(ADMIN_TOKEN),
            &json!({"name": 5}),
        )
        .await;
    let problem = wrong_type.problem(422);
    assert_eq!(problem["errors"][0]["field"], "name");

    let missing = app
        .json_request(
            Method::POST,
            "/api/v1/admin/merchants",
            Some(ADMIN_TOKEN),
            &json!({}),
        )
        .await;
    assert_eq!(missing.problem(422)["errors"][0]["field"], "name");

    let unknown = app
        .json_request(
            Method::POST,
            "/api/v1/admin/merchants",
            Some(ADMIN_TOKEN),
            &json!({"name": "a", "nmae": "b"}),
        )
        .await;
    unknown.problem(422);
}

#[actix_rt::test]
async fn admin_endpoints_need_the_admin_token() {
    let app = TestApp::spawn().await;
    let none = app
        .post_json("/api/v1/admin/merchants", None, &json!({"name": "x"}))
        .await;
    none.problem(401);
    let wrong = app
        .post_json(
            "/api/v1/admin/merchants",
            Some("not-the-token"),
            &json!({"name": "x"}),
        )
        .await;
    wrong.problem(401);
}

#[actix_rt::test]
async fn creating_a_merchant_shows_its_key_once_and_stores_only_a_hash() {
    let app = TestApp::spawn().await;
    let reply = app
        .post_json(
            "/api/v1/admin/merchants",
            Some(ADMIN_TOKEN),
            &json!({"name": "Acme", "webhook_url": "https://acme.example.com/hooks"}),
        )
        .await;
    assert_eq!(reply.status, 201);
    let body = reply.json();
    let key = body["api_key"].as_str().expect("key");
    assert!(key.starts_with("rk_live_") && key.len() >= 8 + 32, "{key}");
    assert!(body["webhook_secret"]
        .as_str()
        .is_some_and(|s| s.starts_with("whsec_")));
    assert_eq!(body["merchant"]["name"], "Acme");
    assert_eq!(
        body["merchant"]["webhook_url"],
        "https://acme.example.com/hooks"
    );
    assert!(body["merchant"]["created_at"].is_string());

    let sql = app.sql().await;
    let stored: Vec<u8> = sql
        .query_one("SELECT api_key_hash FROM merchants", &[])
        .await
        .expect("row")
        .get(0);
    assert_ne!(stored, key.as_bytes());
    assert_eq!(stored.len(), 32);

    let private = app
        .post_json(
            "/api/v1/admin/merchants",
            Some(ADMIN_TOKEN),
            &json!({"name": "Evil", "webhook_url": "http://127.0.0.1:6379/"}),
        )
        .await;
    assert_eq!(private.problem(422)["errors"][0]["field"], "webhook_url");
}

#[actix_rt::test]
async fn bodies_worth_compressing_are_compressed_as_the_client_prefers_and_small_ones_are_not() {
    let app = TestApp::spawn().await;
    let fetch = |path: &'static str, accept: &'static str| {
        app.send(
            app.client
                .get(app.url(path))
                .insert_header(("Accept-Encoding", accept))
                .no_decompress(),
            None,
        )
    };
    let metrics = fetch("/metrics", "gzip").await;
    assert_eq!(metrics.status, 200);
    assert_eq!(metrics.header("content-encoding"), Some("gzip"));
    assert_eq!(metrics.header("vary"), Some("accept-encoding"));
    let preferred = fetch("/metrics", "gzip;q=0.5, br").await;
    assert_eq!(preferred.header("content-encoding"), Some("br"));

    let health = fetch("/health", "gzip, br").await;
    assert_eq!(health.status, 200);
    assert!(health.body.len() < 1024, "{} bytes", health.body.len());
    assert_eq!(health.header("content-encoding"), None);
    serde_json::from_slice::<serde_json::Value>(&health.body).expect("plain JSON");

    let nothing_we_have = fetch("/metrics", "zstd, identity;q=0").await;
    assert_eq!(nothing_we_have.status, 200);
    assert_eq!(nothing_we_have.header("content-encoding"), None);
}

#[actix_rt::test]
async fn metrics_expose_requests_by_route_and_status_actor_stats_and_the_pool() {
    let app = TestApp::spawn().await;
    app.get("/health").await;
    app.get("/nope").await;
    let text = app.metrics().await;
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/health",status="200"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"route="unmatched",status="404""#));
    assert!(text.contains("http_request_duration_seconds_bucket"));
    assert!(text.contains(r#"actor_mailbox_capacity{actor="db"}"#));
    assert!(text.contains(r#"actor_restarts_total{actor="db"} 0"#));
    assert!(text.contains("db_pool_max_connections 16"));
    assert!(text.contains("process_resident_memory_bytes"));
    assert!(text.contains(r#"circuit_state{circuit="postgres"} 0"#));
    assert!(text.contains(r#"overload_limit{lane="writes"}"#));
    // One family per name: a repeated HELP or TYPE makes scrapers reject the whole page.
    let mut families = std::collections::HashSet::new();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).expect("a name");
        assert!(families.insert(name.to_owned()), "{name} declared twice");
    }
}

#[actix_rt::test]
async fn a_graceful_stop_stops_the_actors_after_the_server() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/health/ready").await.status, 200);
    let db = app.db.clone();
    app.stop().await;
    assert_eq!(db.stats().state(), rampart_actors::ActorState::Stopped);
    assert_eq!(
        db.run(crate::support::Select1)
            .await
            .map_err(|e| e.to_string()),
        Err("database unavailable: db actor not running".to_owned())
    );
}

#[actix_rt::test]
async fn the_openapi_document_describes_every_endpoint() {
    let app = TestApp::spawn().await;
    let doc = app.get("/api-docs/openapi.json").await.json();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");
    for (path, methods) in [
        ("/api/v1/admin/merchants", &["post"][..]),
        ("/api/v1/products", &["get", "post"]),
        ("/api/v1/products/{id}", &["get", "patch", "delete"]),
        ("/api/v1/products/{id}/stock", &["post"]),
        ("/api/v1/stores/{merchant_id}/products", &["get"]),
        ("/api/v1/stores/{merchant_id}/products/{id}", &["get"]),
        ("/api/v1/stores/{merchant_id}/orders", &["post"]),
        ("/api/v1/orders", &["get"]),
        ("/api/v1/orders/{id}", &["get"]),
        ("/api/v1/orders/{id}/status", &["post"]),
        ("/health", &["get"]),
        ("/health/ready", &["get"]),
        ("/metrics", &["get"]),
    ] {
        for method in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(*method)).is_some(),
                "{method} {path}"
            );
        }
    }
    assert!(doc["components"]["schemas"].get("Product").is_some());
    assert!(doc["components"]["securitySchemes"]
        .get("api_key")
        .is_some());
}
