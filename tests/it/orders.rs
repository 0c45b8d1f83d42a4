//! Order status transitions: the documented ones only; cancelling returns stock at once.

use crate::support::TestApp;
use serde_json::json;

#[actix_rt::test]
async fn orders_move_pending_paid_shipped_delivered_and_nothing_else() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Orders").await;
    let p = app.create_product(&m, "O", 100, 10).await;
    let order = app.checkout(&m.id, &json!({"customer_email": "o@example.com", "items": [{"product_id": p["id"], "quantity": 1}]}), None).await.json();
    let path = format!(
        "/api/v1/orders/{}/status",
        order["id"].as_str().expect("id")
    );
    let to = |s: &'static str| json!({"status": s});

    app.post_json(&path, Some(&m.api_key), &to("shipped"))
        .await
        .problem(409);
    for step in ["paid", "shipped", "delivered"] {
        let r = app.post_json(&path, Some(&m.api_key), &to(step)).await;
        assert_eq!(r.status, 200, "{step}");
        assert_eq!(r.json()["status"], step);
    }
    assert_eq!(
        app.post_json(&path, Some(&m.api_key), &to("cancelled"))
            .await
            .problem(409)["type"],
        "/problems/invalid-transition"
    );
    app.post_json(&path, Some(&m.api_key), &to("pending"))
        .await
        .problem(422);
    app.post_json(&path, Some(&m.api_key), &to("lost"))
        .await
        .problem(422);

    let sql = app.sql().await;
    let webhooks_and_audits: i64 = sql
        .query_one(
            "SELECT count(*) FROM jobs WHERE queue IN ('email', 'audit')",
            &[],
        )
        .await
        .expect("row")
        .get(0);
    assert_eq!(
        webhooks_and_audits, 8,
        "created, paid, shipped, delivered: an email and an audit job each"
    );
}

#[actix_rt::test]
async fn cancelling_returns_the_stock_in_the_same_transaction() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Cancel").await;
    let p = app.create_product(&m, "C", 100, 10).await;
    let order = app.checkout(&m.id, &json!({"customer_email": "c@example.com", "items": [{"product_id": p["id"], "quantity": 4}]}), None).await.json();
    let id = p["id"].as_str().expect("id");
    assert_eq!(
        app.get_as(&m.api_key, &format!("/api/v1/products/{id}"))
            .await
            .json()["stock"],
        6
    );
    let r = app
        .post_json(
            &format!(
                "/api/v1/orders/{}/status",
                order["id"].as_str().expect("id")
            ),
            Some(&m.api_key),
            &json!({"status": "cancelled"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "cancelled");
    let after = app
        .get_as(&m.api_key, &format!("/api/v1/products/{id}"))
        .await
        .json();
    assert_eq!(after["stock"], 10);
    assert_eq!(
        after["version"], 3,
        "checkout and cancel each bump the version"
    );
    let listed = app
        .get_as(&m.api_key, "/api/v1/orders?status=cancelled")
        .await
        .json();
    assert_eq!(listed["data"].as_array().expect("data").len(), 1);
    let none = app
        .get_as(&m.api_key, "/api/v1/orders?status=paid")
        .await
        .json();
    assert_eq!(none["data"], json!([]));
}
