//! The overload guard refuses only work that cannot finish in time: clients that wait for each
//! answer are served at the database's pace, whatever the edge's limit.

use crate::support::{wait_until, TestApp};
use futures_util::future::join_all;
use serde_json::json;
use std::time::Duration;

fn series(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

#[actix_rt::test]
async fn clients_that_wait_for_each_answer_take_turns_under_the_limit_and_none_is_refused() {
    // A limit of 2 writes in flight against 48 buyers, each waiting for its answer before the
    // next checkout: they queue at the edge instead of being refused.
    let app = TestApp::builder()
        .configure(|s| {
            s.overload.adaptive = false;
            s.overload.min_limit = 1;
            s.overload.initial_limit = 2;
            s.server.request_timeout_ms = 30_000;
        })
        .spawn()
        .await;
    let m = app.create_merchant("Queue").await;
    let product = app.create_product(&m, "Q-1", 500, 10_000).await;
    let body = json!({"customer_email": "q@example.com",
        "items": [{"product_id": product["id"], "quantity": 1}]});
    let buyers = (0..48).map(|_| async {
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(app.checkout(&m.id, &body, None).await.status.as_u16());
        }
        statuses
    });
    let statuses: Vec<u16> = join_all(buyers).await.into_iter().flatten().collect();
    assert!(
        statuses.iter().all(|s| *s == 201),
        "every checkout served: {statuses:?}"
    );
    let metrics = app.metrics().await;
    assert_eq!(
        series(&metrics, r#"overload_shed_total{lane="writes"}"#),
        0.0
    );
    assert!(
        series(&metrics, r#"overload_waited_total{lane="writes"}"#) > 0.0,
        "the limit was full and buyers waited their turn"
    );
    let sold: i64 = app
        .sql()
        .await
        .query_one(
            "SELECT 10000 - stock FROM products WHERE id = $1::text::uuid",
            &[&product["id"].as_str().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sold, 48 * 4);
}

#[actix_rt::test]
async fn a_checkout_behind_a_stuck_one_waits_in_line_and_is_served_once_the_place_frees() {
    let app = TestApp::builder()
        .configure(|s| {
            s.overload.adaptive = false;
            s.overload.min_limit = 1;
            s.overload.initial_limit = 1;
            s.server.request_timeout_ms = 30_000;
        })
        .spawn()
        .await;
    let m = app.create_merchant("Line").await;
    let locked = app.create_product(&m, "L-1", 500, 100).await;
    let other = app.create_product(&m, "L-2", 500, 100).await;
    let one = |p: &serde_json::Value| json!({"customer_email": "l@example.com", "items": [{"product_id": p["id"], "quantity": 1}]});
    // The one place is held by a checkout stuck behind a row lock taken here.
    let mut pg = app.sql().await;
    let tx = pg.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM products WHERE id = $1::text::uuid FOR UPDATE",
        &[&locked["id"].as_str().unwrap()],
    )
    .await
    .unwrap();
    let writes = |name: &'static str| {
        let app = &app;
        async move { series(&app.metrics().await, &format!(r#"{name}{{lane="writes"}}"#)) }
    };
    let (first, second) = (one(&locked), one(&other));
    let stuck = app.checkout(&m.id, &first, None);
    let behind = async {
        wait_until(
            "the stuck checkout holds the place",
            Duration::from_secs(10),
            async || writes("overload_inflight").await >= 1.0,
        )
        .await;
        app.checkout(&m.id, &second, None).await
    };
    let release = async {
        wait_until(
            "the second checkout waits in line",
            Duration::from_secs(10),
            async || writes("overload_queued").await >= 1.0,
        )
        .await;
        tx.rollback().await.unwrap();
    };
    let (stuck, behind, ()) = futures_util::join!(stuck, behind, release);
    assert_eq!((stuck.status.as_u16(), behind.status.as_u16()), (201, 201));
    assert_eq!(writes("overload_shed_total").await, 0.0);
    assert_eq!(writes("overload_waited_total").await, 1.0);
    let rows = pg
        .query(
            "SELECT stock FROM products WHERE id IN ($1::text::uuid, $2::text::uuid)",
            &[
                &locked["id"].as_str().unwrap(),
                &other["id"].as_str().unwrap(),
            ],
        )
        .await
        .unwrap();
    assert!(
        rows.iter().all(|r| r.get::<_, i64>(0) == 99),
        "one unit each"
    );
}
