//! Tenant isolation: another merchant's resources are 404 on every endpoint, and untouched.

use crate::support::TestApp;
use awc::http::Method;
use serde_json::json;

#[actix_rt::test]
async fn merchant_b_gets_404_on_each_of_merchant_a_s_resources_on_every_endpoint() {
    let app = TestApp::spawn().await;
    let a = app.create_merchant("A").await;
    let b = app.create_merchant("B").await;
    let product = app.create_product(&a, "A-ONLY", 100, 5).await;
    let pid = product["id"].as_str().expect("id");
    let order = app.checkout(&a.id, &json!({"customer_email": "a@example.com", "items": [{"product_id": pid, "quantity": 1}]}), None).await.json();
    let oid = order["id"].as_str().expect("id");

    let attempts: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::GET, format!("/api/v1/products/{pid}"), None),
        (
            Method::PATCH,
            format!("/api/v1/products/{pid}"),
            Some(json!({"name": "stolen"})),
        ),
        (Method::DELETE, format!("/api/v1/products/{pid}"), None),
        (
            Method::POST,
            format!("/api/v1/products/{pid}/stock"),
            Some(json!({"delta": -5})),
        ),
        (Method::GET, format!("/api/v1/orders/{oid}"), None),
        (
            Method::POST,
            format!("/api/v1/orders/{oid}/status"),
            Some(json!({"status": "cancelled"})),
        ),
    ];
    for (method, path, body) in attempts {
        let mut req = app
            .client
            .request(method.clone(), app.url(&path))
            .bearer_auth(&b.api_key);
        let reply = match body {
            Some(body) => {
                req = req.content_type("application/json");
                app.send(req, Some(body.to_string().as_bytes())).await
            }
            None => app.send(req, None).await,
        };
        reply.problem(404);
    }
    // A's product seen through B's storefront, and B's lists, show nothing of A.
    app.get(&format!("/api/v1/stores/{}/products/{pid}", b.id))
        .await
        .problem(404);
    let checkout = app.checkout(&b.id, &json!({"customer_email": "b@example.com", "items": [{"product_id": pid, "quantity": 1}]}), None).await;
    assert_eq!(
        checkout.problem(422)["errors"][0]["field"],
        "items[0].product_id"
    );
    assert_eq!(
        app.get_as(&b.api_key, "/api/v1/products").await.json()["data"],
        json!([])
    );
    assert_eq!(
        app.get_as(&b.api_key, "/api/v1/orders").await.json()["data"],
        json!([])
    );

    let own = app
        .get_as(&a.api_key, &format!("/api/v1/products/{pid}"))
        .await
        .json();
    assert_eq!(
        (
            own["name"].as_str(),
            own["stock"].as_i64(),
            own["status"].as_str()
        ),
        (Some("Product A-ONLY"), Some(4), Some("active"))
    );
    assert_eq!(
        app.get_as(&a.api_key, &format!("/api/v1/orders/{oid}"))
            .await
            .json()["status"],
        "pending"
    );
}

#[actix_rt::test]
async fn merchant_endpoints_need_a_valid_key() {
    let app = TestApp::spawn().await;
    for path in ["/api/v1/products", "/api/v1/orders"] {
        app.get(path).await.problem(401);
        app.get_as("rk_live_0000", path).await.problem(401);
    }
}
