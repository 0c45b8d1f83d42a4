//! A request answered 503 at its deadline has changed nothing, and never changes anything later.

use crate::support::{wait_until, Merchant, TestApp};
use futures_util::future::join_all;
use serde_json::{json, Value};
use std::time::Duration;

async fn counts(app: &TestApp, product_id: &str) -> (i64, i64, i64) {
    let sql = app.sql().await;
    let row = sql
        .query_one(
            "SELECT (SELECT count(*) FROM orders),
                    (SELECT count(*) FROM jobs WHERE payload->>'entity_type' IS DISTINCT FROM 'product'),
                    (SELECT stock FROM products WHERE id = $1::text::uuid)",
            &[&product_id],
        )
        .await
        .expect("counts");
    (row.get(0), row.get(1), row.get(2))
}

/// A product whose row another session holds locked until the returned client commits.
async fn locked_product(app: &TestApp, merchant: &Merchant) -> (String, tokio_postgres::Client) {
    let product = app.create_product(merchant, "LOCKED-1", 1000, 10).await;
    let id = product["id"].as_str().expect("id").to_owned();
    let locker = app.sql().await;
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM products WHERE id = '{id}' FOR UPDATE"
        ))
        .await
        .expect("lock the row");
    (id, locker)
}

fn buy(id: &str) -> Value {
    json!({"customer_email": "late@example.com", "items": [{"product_id": id, "quantity": 1}]})
}

#[actix_rt::test]
async fn a_checkout_answered_503_at_its_deadline_is_never_committed_afterwards() {
    let app = TestApp::builder()
        .configure(|s| s.server.request_timeout_ms = 400)
        .spawn()
        .await;
    let merchant = app.create_merchant("Slow lock").await;
    let (id, locker) = locked_product(&app, &merchant).await;

    let started = std::time::Instant::now();
    let reply = app.checkout(&merchant.id, &buy(&id), None).await;
    reply.problem(503);
    assert!(reply.header("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered at the deadline, not when the lock is released"
    );

    locker.batch_execute("COMMIT").await.expect("release");
    wait_until("the Db is idle", Duration::from_secs(10), async || {
        let pool = app.gauge.snapshot();
        pool.inflight == 0 && pool.queued == 0
    })
    .await;
    assert_eq!(
        counts(&app, &id).await,
        (0, 0, 10),
        "no order, no job, no stock taken"
    );
    // And the product is still for sale to the client that retries.
    assert_eq!(
        app.checkout(&merchant.id, &buy(&id), None).await.status,
        201
    );
}

#[actix_rt::test]
async fn fifty_checkouts_queued_behind_a_lock_past_their_deadline_all_change_nothing() {
    let app = TestApp::builder()
        .configure(|s| {
            s.server.request_timeout_ms = 600;
            s.database.max_connections = 4;
            s.database.max_inflight = 8;
            // The subject is the Db actor's queue: the edge's line, which may hold or refuse
            // such a burst before it (by its adaptive limit, which load moves), is off.
            s.overload.enabled = false;
        })
        .spawn()
        .await;
    let merchant = app.create_merchant("Queue behind a lock").await;
    let (id, locker) = locked_product(&app, &merchant).await;

    let body = buy(&id);
    let replies = join_all((0..50).map(|_| app.checkout(&merchant.id, &body, None))).await;
    for reply in &replies {
        reply.problem(503);
    }
    locker.batch_execute("COMMIT").await.expect("release");
    wait_until("the Db is idle", Duration::from_secs(10), async || {
        let pool = app.gauge.snapshot();
        pool.inflight == 0 && pool.queued == 0
    })
    .await;
    assert_eq!(counts(&app, &id).await, (0, 0, 10));
    assert!(
        app.db.stats().snapshot().expired > 0,
        "commands whose deadline passed while queued were skipped"
    );
}

#[actix_rt::test]
async fn a_product_write_past_its_deadline_is_rolled_back() {
    let app = TestApp::builder()
        .configure(|s| s.server.request_timeout_ms = 400)
        .spawn()
        .await;
    let merchant = app.create_merchant("Slow stock").await;
    let (id, locker) = locked_product(&app, &merchant).await;
    let reply = app
        .post_json(
            &format!("/api/v1/products/{id}/stock"),
            Some(&merchant.api_key),
            &json!({"delta": 5}),
        )
        .await;
    reply.problem(503);
    locker.batch_execute("COMMIT").await.expect("release");
    wait_until("the Db is idle", Duration::from_secs(10), async || {
        app.gauge.snapshot().inflight == 0
    })
    .await;
    assert_eq!(
        counts(&app, &id).await.2,
        10,
        "the delta was not applied later"
    );
}
