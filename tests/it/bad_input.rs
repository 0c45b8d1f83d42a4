//! Bad input over every endpoint: only 4xx problem responses, never a 500, nothing written.

use crate::support::{TestApp, ADMIN_TOKEN};
use awc::http::Method;

#[actix_rt::test]
async fn every_endpoint_answers_bad_input_with_a_4xx_problem_and_writes_nothing() {
    let app = TestApp::builder()
        .configure(|s| s.server.body_limit_bytes = 4096)
        .spawn()
        .await;
    let m = app.create_merchant("Target").await;
    let p = app.create_product(&m, "T", 100, 5).await;
    let pid = p["id"].as_str().expect("id").to_owned();
    let order = app
        .checkout(&m.id, &serde_json::json!({"customer_email": "t@example.com", "items": [{"product_id": pid, "quantity": 1}]}), None)
        .await
        .json();
    let oid = order["id"].as_str().expect("id").to_owned();
    let store = m.id.clone();
    let sqlish = "'; DROP TABLE products; --";
    let huge = "9".repeat(40);
    let oversized = format!("{{\"name\": \"{}\"}}", "x".repeat(5000));

    // (method, path, content type, body, who)
    let key = Some(m.api_key.as_str());
    let admin = Some(ADMIN_TOKEN);
    let json = "application/json";
    let cases: Vec<(Method, String, &str, String, Option<&str>)> = vec![
        (Method::POST, "/api/v1/admin/merchants".into(), json, "{".into(), admin),
        (Method::POST, "/api/v1/admin/merchants".into(), json, r#"{"name": ""}"#.into(), admin),
        (Method::POST, "/api/v1/admin/merchants".into(), json, r#"{"name": "x", "webhook_url": "gopher://x"}"#.into(), admin),
        (Method::POST, "/api/v1/products".into(), json, "[]".into(), key),
        (Method::POST, "/api/v1/products".into(), json, r#"{"sku": 5, "name": "n", "price_cents": 1, "currency": "EUR"}"#.into(), key),
        (Method::POST, "/api/v1/products".into(), json, format!(r#"{{"sku": "a", "name": "n", "price_cents": {huge}, "currency": "EUR"}}"#), key),
        (Method::POST, "/api/v1/products".into(), json, r#"{"sku": "a", "name": "n", "price_cents": -1, "currency": "EUR"}"#.into(), key),
        (Method::POST, "/api/v1/products".into(), json, r#"{"sku": "a", "name": "n", "price_cents": 1, "currency": "euro"}"#.into(), key),
        (Method::POST, "/api/v1/products".into(), json, r#"{"sku": "a", "name": "n", "price_cents": 1, "currency": "EUR", "stock": -4}"#.into(), key),
        (Method::POST, "/api/v1/products".into(), json, format!(r#"{{"sku": "{}", "name": "n", "price_cents": 1, "currency": "EUR"}}"#, "s".repeat(65)), key),
        (Method::POST, "/api/v1/products".into(), "text/plain", r#"{"sku": "a"}"#.into(), key),
        (Method::POST, "/api/v1/products".into(), json, oversized.clone(), key),
        (Method::PATCH, format!("/api/v1/products/{pid}"), json, "{}".into(), key),
        (Method::PATCH, format!("/api/v1/products/{pid}"), json, r#"{"price_cents": "free"}"#.into(), key),
        (Method::PATCH, format!("/api/v1/products/{pid}"), json, r#"{"status": "deleted"}"#.into(), key),
        (Method::PATCH, format!("/api/v1/products/{pid}"), json, r#"{"stock": -1}"#.into(), key),
        (Method::POST, format!("/api/v1/products/{pid}/stock"), json, r#"{"delta": 1.5}"#.into(), key),
        (Method::POST, format!("/api/v1/products/{pid}/stock"), json, format!(r#"{{"delta": {huge}}}"#), key),
        (Method::POST, format!("/api/v1/products/{pid}/stock"), json, r#"{"delta": -1000000000000}"#.into(), key),
        (Method::POST, format!("/api/v1/products/{pid}/stock"), json, "null".into(), key),
        (Method::POST, format!("/api/v1/stores/{store}/orders"), json, "{".into(), None),
        (Method::POST, format!("/api/v1/stores/{store}/orders"), json, r#"{"customer_email": "x@example.com", "items": []}"#.into(), None),
        (Method::POST, format!("/api/v1/stores/{store}/orders"), json, format!(r#"{{"customer_email": "{sqlish}", "items": [{{"product_id": "{pid}", "quantity": 1}}]}}"#), None),
        (Method::POST, format!("/api/v1/stores/{store}/orders"), json, format!(r#"{{"customer_email": "x@example.com", "items": [{{"product_id": "{pid}", "quantity": -1}}]}}"#), None),
        (Method::POST, format!("/api/v1/stores/{store}/orders"), json, format!(r#"{{"customer_email": "x@example.com", "items": [{{"product_id": "{pid}", "quantity": 1001}}]}}"#), None),
        (Method::POST, format!("/api/v1/stores/{store}/orders"), json, format!(r#"{{"customer_email": "x@example.com", "items": [{{"product_id": "{pid}", "quantity": {huge}}}]}}"#), None),
        (Method::POST, format!("/api/v1/stores/{store}/orders"), json, r#"{"customer_email": "x@example.com", "items": [{"product_id": "not-a-uuid", "quantity": 1}]}"#.into(), None),
        (Method::POST, format!("/api/v1/stores/{store}/orders"), "application/xml", "<order/>".into(), None),
        (Method::POST, format!("/api/v1/stores/{store}/orders"), json, oversized.clone(), None),
        (Method::POST, format!("/api/v1/orders/{oid}/status"), json, r#"{"status": 3}"#.into(), key),
        (Method::POST, format!("/api/v1/orders/{oid}/status"), json, format!(r#"{{"status": "{sqlish}"}}"#), key),
    ];
    let mut gets: Vec<String> = Vec::new();
    for param in [
        "status",
        "category",
        "q",
        "min_price",
        "max_price",
        "sort",
        "limit",
        "cursor",
        "page",
        "per_page",
    ] {
        gets.push(format!("/api/v1/products?{param}={}", urlencode(sqlish)));
        gets.push(format!(
            "/api/v1/stores/{store}/products?{param}={}",
            urlencode(sqlish)
        ));
    }
    for param in [
        "status", "from", "to", "sort", "limit", "cursor", "page", "per_page",
    ] {
        gets.push(format!("/api/v1/orders?{param}={}", urlencode(sqlish)));
    }
    gets.extend([
        "/api/v1/products?min_price=-1".to_owned(),
        format!("/api/v1/products?max_price={huge}"),
        "/api/v1/products?min_price=10&max_price=5".to_owned(),
        "/api/v1/products?limit=abc".to_owned(),
        "/api/v1/orders?from=2026-13-45".to_owned(),
        "/api/v1/products/not-a-uuid".to_owned(),
        format!("/api/v1/stores/{store}/products/{}", urlencode(sqlish)),
        format!("/api/v1/stores/{}/products", urlencode(sqlish)),
    ]);

    let sql = app.sql().await;
    let snapshot = || async {
        let row = sql
            .query_one(
                "SELECT (SELECT count(*) FROM merchants), (SELECT count(*) FROM products), (SELECT sum(stock)::bigint FROM products),
                        (SELECT max(version) FROM products), (SELECT count(*) FROM orders), (SELECT count(*) FROM jobs)",
                &[],
            )
            .await
            .expect("row");
        (0..6)
            .map(|i| row.get::<_, Option<i64>>(i))
            .collect::<Vec<_>>()
    };
    let before = snapshot().await;

    for (method, path, content_type, body, who) in &cases {
        let mut req = app
            .client
            .request(method.clone(), app.url(path))
            .content_type(*content_type);
        if let Some(token) = who {
            req = req.bearer_auth(token);
        }
        let reply = app.send(req, Some(body.as_bytes())).await;
        assert!(
            reply.status.is_client_error(),
            "{method} {path} {body:.80}: {}",
            reply.status
        );
        reply.problem(reply.status.as_u16());
    }
    for path in &gets {
        let reply = app.get_as(&m.api_key, path).await;
        let reply = if reply.status == 200 {
            reply
        } else {
            reply.problem(reply.status.as_u16());
            reply
        };
        // A text filter such as `q` or `category` may legitimately match nothing.
        assert!(
            reply.status == 200 || reply.status.is_client_error(),
            "GET {path}: {}",
            reply.status
        );
        if reply.status == 200 {
            assert_eq!(reply.json()["data"], serde_json::json!([]), "GET {path}");
        }
    }
    assert_eq!(snapshot().await, before, "nothing was written");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
