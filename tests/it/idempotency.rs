//! Idempotency keys: one effect per key, the first response replayed byte for byte.

use crate::support::{wait_until, TestApp};
use futures_util::future::join_all;
use serde_json::json;
use std::time::Duration;

#[actix_rt::test]
async fn a_second_request_with_a_key_whose_first_is_still_running_is_409_in_flight() {
    let app = TestApp::spawn().await;
    let merchant = app.create_merchant("In flight").await;
    let product = app.create_product(&merchant, "FLY", 1000, 5).await;
    let id = product["id"].as_str().expect("id").to_owned();
    let body =
        json!({"customer_email": "fly@example.com", "items": [{"product_id": id, "quantity": 1}]});
    // Hold the product's row so the first request stays in flight, holding its key.
    let locker = app.sql().await;
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM products WHERE id = '{id}' FOR UPDATE"
        ))
        .await
        .expect("lock");
    let first = app.checkout(&merchant.id, &body, Some("slow-key"));
    let second = async {
        let sql = app.sql().await;
        wait_until("the first request waits on the row lock", Duration::from_secs(10), async || {
            sql.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rampart' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .expect("activity")
            .get::<_, i64>(0)
                == 1
        })
        .await;
        let reply = app.checkout(&merchant.id, &body, Some("slow-key")).await;
        locker.batch_execute("COMMIT").await.expect("release");
        reply
    };
    let (first, second) = futures_util::join!(first, second);
    assert_eq!(
        second.problem(409)["type"],
        "/problems/idempotency-in-flight"
    );
    assert_eq!(first.status, 201);
    assert!(first.header("idempotent-replayed").is_none());
    let replay = app.checkout(&merchant.id, &body, Some("slow-key")).await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, first.body);
}

#[actix_rt::test]
async fn a_hundred_concurrent_identical_posts_with_one_key_make_exactly_one_order() {
    let app = TestApp::spawn().await;
    let merchant = app.create_merchant("Retries").await;
    let product = app.create_product(&merchant, "IDEM", 1000, 500).await;
    let body = json!({"customer_email": "retry@example.com", "items": [{"product_id": product["id"], "quantity": 1}]});

    let replies =
        join_all((0..100).map(|_| app.checkout(&merchant.id, &body, Some("order-attempt-1"))))
            .await;
    let created: Vec<_> = replies.iter().filter(|r| r.status == 201).collect();
    let original: Vec<_> = created
        .iter()
        .filter(|r| r.header("idempotent-replayed").is_none())
        .collect();
    assert_eq!(original.len(), 1, "exactly one response is not a replay");
    let first = &original[0].body;
    for reply in &replies {
        match reply.status.as_u16() {
            201 => assert_eq!(&reply.body, first, "every success is the first response"),
            409 => assert_eq!(
                reply.problem(409)["type"],
                "/problems/idempotency-in-flight"
            ),
            other => panic!(
                "unexpected {other}: {}",
                String::from_utf8_lossy(&reply.body)
            ),
        }
    }
    let sql = app.sql().await;
    let orders: i64 = sql
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(orders, 1);

    let replay = app
        .checkout(&merchant.id, &body, Some("order-attempt-1"))
        .await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(&replay.body, first, "byte-identical replay");
    let stock: i64 = sql
        .query_one("SELECT stock FROM products", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(stock, 499);
}

#[actix_rt::test]
async fn the_same_key_with_another_body_is_422_and_keys_are_scoped_to_the_store() {
    let app = TestApp::spawn().await;
    let a = app.create_merchant("A").await;
    let b = app.create_merchant("B").await;
    let pa = app.create_product(&a, "PA", 100, 10).await;
    let pb = app.create_product(&b, "PB", 100, 10).await;
    let body = |p: &serde_json::Value, q: i64| json!({"customer_email": "k@example.com", "items": [{"product_id": p["id"], "quantity": q}]});

    assert_eq!(
        app.checkout(&a.id, &body(&pa, 1), Some("shared-key"))
            .await
            .status,
        201
    );
    let reused = app.checkout(&a.id, &body(&pa, 2), Some("shared-key")).await;
    assert_eq!(
        reused.problem(422)["type"],
        "/problems/idempotency-key-reused"
    );
    // Another store has its own key space.
    let other_store = app.checkout(&b.id, &body(&pb, 2), Some("shared-key")).await;
    assert_eq!(other_store.status, 201);
    assert!(other_store.header("idempotent-replayed").is_none());
}

#[actix_rt::test]
async fn a_failed_first_attempt_stores_nothing_so_the_client_may_retry_with_the_same_key() {
    let app = TestApp::spawn().await;
    let merchant = app.create_merchant("Retry after failure").await;
    let product = app.create_product(&merchant, "LOW", 100, 1).await;
    let body = json!({"customer_email": "k@example.com", "items": [{"product_id": product["id"], "quantity": 2}]});
    app.checkout(&merchant.id, &body, Some("k-1"))
        .await
        .problem(409);

    let sql = app.sql().await;
    let keys: i64 = sql
        .query_one("SELECT count(*) FROM idempotency_keys", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(keys, 0);
    let id = product["id"].as_str().expect("id");
    let restock = app
        .post_json(
            &format!("/api/v1/products/{id}/stock"),
            Some(&merchant.api_key),
            &json!({"delta": 5}),
        )
        .await;
    assert_eq!(restock.status, 200);
    let retried = app.checkout(&merchant.id, &body, Some("k-1")).await;
    assert_eq!(retried.status, 201);
    assert!(retried.header("idempotent-replayed").is_none());
}

#[actix_rt::test]
async fn an_oversized_or_empty_key_is_400() {
    let app = TestApp::spawn().await;
    let merchant = app.create_merchant("Keys").await;
    let product = app.create_product(&merchant, "K", 100, 10).await;
    let body = json!({"customer_email": "k@example.com", "items": [{"product_id": product["id"], "quantity": 1}]});
    app.checkout(&merchant.id, &body, Some(&"x".repeat(256)))
        .await
        .problem(400);
    for blank in ["", "   "] {
        let reply = app.checkout(&merchant.id, &body, Some(blank)).await;
        assert_eq!(reply.problem(400)["errors"][0]["field"], "Idempotency-Key");
    }
    let ok = app
        .checkout(&merchant.id, &body, Some(&"x".repeat(255)))
        .await;
    ok.assert_status(201);
}

#[actix_rt::test]
async fn keys_older_than_24_hours_no_longer_replay_and_are_pruned() {
    let app = TestApp::spawn().await;
    let merchant = app.create_merchant("Old keys").await;
    let product = app.create_product(&merchant, "OLD", 100, 10).await;
    let body = json!({"customer_email": "k@example.com", "items": [{"product_id": product["id"], "quantity": 1}]});
    assert_eq!(
        app.checkout(&merchant.id, &body, Some("yesterday"))
            .await
            .status,
        201
    );
    let sql = app.sql().await;
    sql.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'",
        &[],
    )
    .await
    .expect("age the key");

    let again = app.checkout(&merchant.id, &body, Some("yesterday")).await;
    assert_eq!(again.status, 201);
    assert!(
        again.header("idempotent-replayed").is_none(),
        "an expired key creates a new order"
    );
    sql.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'",
        &[],
    )
    .await
    .expect("age the key");
    let pruned = app
        .db
        .run(rampart::store::orders::PruneIdempotencyKeys)
        .await
        .expect("prune");
    assert_eq!(pruned, 1);
}
