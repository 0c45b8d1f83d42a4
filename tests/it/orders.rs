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
            "SELECT count(*) FROM jobs
             WHERE queue = 'email' OR (queue = 'audit' AND payload->>'entity_type' = 'order')",
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

async fn stock_of(app: &crate::support::TestApp, id: &str) -> i64 {
    app.sql()
        .await
        .query_one(
            "SELECT stock FROM products WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .expect("stock")
        .get(0)
}

#[actix_rt::test]
async fn twenty_concurrent_cancels_of_one_order_restock_exactly_once() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Cancels").await;
    let p = app.create_product(&m, "CC", 100, 10).await;
    let id = p["id"].as_str().expect("id");
    let order = app.checkout(&m.id, &json!({"customer_email": "c@example.com", "items": [{"product_id": id, "quantity": 3}]}), None).await.json();
    let path = format!(
        "/api/v1/orders/{}/status",
        order["id"].as_str().expect("id")
    );
    let cancel = json!({"status": "cancelled"});
    let replies = futures_util::future::join_all(
        (0..20).map(|_| app.post_json(&path, Some(&m.api_key), &cancel)),
    )
    .await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 1, "exactly one cancel succeeds");
    for reply in replies.iter().filter(|r| r.status != 200) {
        assert_eq!(reply.problem(409)["type"], "/problems/invalid-transition");
    }
    assert_eq!(stock_of(&app, id).await, 10, "restocked once");
}

#[actix_rt::test]
async fn a_cancel_racing_checkouts_of_the_same_product_never_oversells_or_loses_stock() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Race").await;
    let p = app.create_product(&m, "RACE", 100, 5).await;
    let id = p["id"].as_str().expect("id");
    let one =
        json!({"customer_email": "r@example.com", "items": [{"product_id": id, "quantity": 1}]});
    // Five units sold: the shelf is empty.
    for _ in 0..5 {
        assert_eq!(app.checkout(&m.id, &one, None).await.status, 201);
    }
    let first = app
        .get_as(&m.api_key, "/api/v1/orders?limit=1")
        .await
        .json();
    let order_id = first["data"][0]["id"].as_str().expect("id").to_owned();
    let (status_path, cancelled) = (
        format!("/api/v1/orders/{order_id}/status"),
        json!({"status": "cancelled"}),
    );
    let cancel = app.post_json(&status_path, Some(&m.api_key), &cancelled);
    let buys = futures_util::future::join_all((0..10).map(|_| app.checkout(&m.id, &one, None)));
    let (cancelled, bought) = futures_util::join!(cancel, buys);
    assert_eq!(cancelled.status, 200);
    let sold = bought.iter().filter(|r| r.status == 201).count() as i64;
    for reply in bought.iter().filter(|r| r.status != 201) {
        assert_eq!(reply.problem(409)["type"], "/problems/insufficient-stock");
    }
    assert!(
        sold <= 1,
        "only the returned unit can be sold again: {sold}"
    );
    assert_eq!(
        stock_of(&app, id).await,
        1 - sold,
        "no unit lost or made up"
    );
    let units: i64 = app
        .sql()
        .await
        .query_one(
            "SELECT coalesce(sum(i.quantity), 0)::bigint FROM order_items i JOIN orders o ON o.id = i.order_id WHERE o.status <> 'cancelled'",
            &[],
        )
        .await
        .expect("units")
        .get(0);
    assert_eq!(
        units + stock_of(&app, id).await,
        5,
        "sold plus shelf is the stock"
    );
}
