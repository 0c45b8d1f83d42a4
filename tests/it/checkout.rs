//! Checkout under concurrency: never oversold, never deadlocked, all or nothing.

use crate::support::TestApp;
use futures_util::future::join_all;
use serde_json::{json, Value};
use std::collections::HashSet;

fn one(product: &Value, quantity: i64) -> Value {
    json!({"customer_email": "buyer@example.com", "items": [{"product_id": product["id"], "quantity": quantity}]})
}

#[actix_rt::test]
async fn two_hundred_concurrent_checkouts_of_one_unit_against_stock_50_sell_exactly_50() {
    // Sized for the burst: every request fits the Db queue and the deadline of a loaded CI.
    let app = TestApp::builder()
        .configure(|s| {
            s.server.request_timeout_ms = 60_000;
            s.actors.db.mailbox = 1024;
        })
        .spawn()
        .await;
    let merchant = app.create_merchant("Flash sale").await;
    let product = app.create_product(&merchant, "HOT-1", 999, 50).await;
    let body = one(&product, 1);

    let replies = join_all((0..200).map(|_| app.checkout(&merchant.id, &body, None))).await;
    let created: Vec<Value> = replies
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.json())
        .collect();
    let sold_out = replies.iter().filter(|r| r.status == 409).count();
    // A 503 is legitimate under load; the contract says it changed nothing.
    let unavailable = replies.iter().filter(|r| r.status == 503).count();
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(
        created.len() + sold_out + unavailable,
        200,
        "only 201, 409 or 503: {statuses:?}"
    );
    assert!(unavailable <= 150, "{statuses:?}");
    assert_eq!(
        created.len(),
        50,
        "exactly the stock is sold: {statuses:?} {}",
        String::from_utf8_lossy(
            &replies
                .iter()
                .find(|r| r.status == 409)
                .map(|r| r.body.clone())
                .unwrap_or_default()
        )
    );
    for reply in replies.iter().filter(|r| r.status == 409) {
        assert_eq!(reply.problem(409)["type"], "/problems/insufficient-stock");
    }

    let mut numbers: Vec<i64> = created
        .iter()
        .map(|o| o["number"].as_i64().expect("number"))
        .collect();
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers.len(), 50, "distinct order numbers");

    let sql = app.sql().await;
    let stock: i64 = sql
        .query_one("SELECT stock FROM products", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(stock, 0);
    let orders: i64 = sql
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(orders, 50);
    // Numbers increase in the order the orders were created.
    let rows = sql
        .query("SELECT number FROM orders ORDER BY created_at, number", &[])
        .await
        .expect("rows");
    let by_time: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert!(by_time.windows(2).all(|w| w[0] < w[1]), "{by_time:?}");
}

#[actix_rt::test]
async fn concurrent_multi_item_checkouts_over_overlapping_products_never_oversell_or_deadlock() {
    let app = TestApp::spawn().await;
    let merchant = app.create_merchant("Overlap").await;
    let mut products = Vec::new();
    for i in 0..4 {
        products.push(
            app.create_product(&merchant, &format!("P{i}"), 100 + i, 30)
                .await,
        );
    }
    // Orders name their items in different orders, so naive locking would deadlock.
    let bodies: Vec<Value> = (0..120)
        .map(|n| {
            let a = &products[n % 4];
            let b = &products[(n + 1 + n % 3) % 4];
            let items = if n % 2 == 0 {
                json!([{"product_id": a["id"], "quantity": 1}, {"product_id": b["id"], "quantity": 2}])
            } else {
                json!([{"product_id": b["id"], "quantity": 2}, {"product_id": a["id"], "quantity": 1}])
            };
            json!({"customer_email": format!("c{n}@example.com"), "items": items})
        })
        .collect();
    let replies = join_all(bodies.iter().map(|b| app.checkout(&merchant.id, b, None))).await;
    for reply in &replies {
        assert!(
            reply.status == 201 || reply.status == 409,
            "only created or insufficient: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }

    let sql = app.sql().await;
    let rows = sql
        .query(
            "SELECT p.id, p.stock, coalesce(sum(i.quantity), 0)::bigint
             FROM products p LEFT JOIN order_items i ON i.product_id = p.id GROUP BY p.id, p.stock",
            &[],
        )
        .await
        .expect("rows");
    for row in rows {
        let (stock, sold): (i64, i64) = (row.get(1), row.get(2));
        assert!(stock >= 0);
        assert_eq!(
            stock + sold,
            30,
            "units sold plus stock left equal the starting stock"
        );
    }
    let created = replies.iter().filter(|r| r.status == 201).count();
    assert!(created > 0);
}

#[actix_rt::test]
async fn a_short_item_fails_the_whole_checkout_naming_the_product_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let merchant = app.create_merchant("Short").await;
    let plenty = app.create_product(&merchant, "PLENTY", 500, 10).await;
    let scarce = app.create_product(&merchant, "SCARCE", 700, 1).await;
    let body = json!({"customer_email": "x@example.com", "items": [
        {"product_id": plenty["id"], "quantity": 3}, {"product_id": scarce["id"], "quantity": 2}]});
    let reply = app.checkout(&merchant.id, &body, None).await;
    let problem = reply.problem(409);
    assert_eq!(problem["type"], "/problems/insufficient-stock");
    assert!(problem["detail"]
        .as_str()
        .expect("detail")
        .contains(scarce["id"].as_str().expect("id")));

    let sql = app.sql().await;
    let stocks: Vec<i64> = sql
        .query("SELECT stock FROM products ORDER BY sku", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stocks, vec![10, 1], "nothing changed");
    let counts: (i64, i64) = {
        let row = sql
            .query_one(
                "SELECT (SELECT count(*) FROM orders),
                        (SELECT count(*) FROM jobs WHERE payload->>'entity_type' IS DISTINCT FROM 'product')",
                &[],
            )
            .await
            .expect("row");
        (row.get(0), row.get(1))
    };
    assert_eq!(counts, (0, 0));
}

#[actix_rt::test]
async fn a_checkout_snapshots_prices_merges_repeated_products_and_enqueues_its_jobs() {
    let app = TestApp::spawn().await;
    let merchant = app
        .post_json(
            "/api/v1/admin/merchants",
            Some(crate::support::ADMIN_TOKEN),
            &json!({"name": "Hooked", "webhook_url": "https://hooks.example.com/rampart"}),
        )
        .await
        .json();
    let merchant = crate::support::Merchant {
        id: merchant["merchant"]["id"].as_str().expect("id").to_owned(),
        api_key: merchant["api_key"].as_str().expect("key").to_owned(),
    };
    let a = app.create_product(&merchant, "A", 250, 10).await;
    let body = json!({"customer_email": "buyer@example.com", "customer_name": "Ada", "items": [
        {"product_id": a["id"], "quantity": 1}, {"product_id": a["id"], "quantity": 2}]});
    let reply = app.checkout(&merchant.id, &body, None).await;
    reply.assert_status(201);
    let order = reply.json();
    assert_eq!(
        reply.header("location"),
        Some(format!("/api/v1/orders/{}", order["id"].as_str().expect("id")).as_str())
    );
    assert_eq!(order["status"], "pending");
    assert_eq!(order["total_cents"], 750);
    assert_eq!(order["currency"], "EUR");
    assert_eq!(order["customer_name"], "Ada");
    assert_eq!(
        order["items"].as_array().expect("items").len(),
        1,
        "repeated product ids merge into one line"
    );
    assert_eq!(order["items"][0]["quantity"], 3);
    assert_eq!(order["items"][0]["unit_price_cents"], 250);

    // A later price change does not touch the order.
    let patched = app
        .json_request(
            awc::http::Method::PATCH,
            &format!("/api/v1/products/{}", a["id"].as_str().expect("id")),
            Some(&merchant.api_key),
            &json!({"price_cents": 999}),
        )
        .await;
    assert_eq!(patched.status, 200);
    let again = app
        .get_as(
            &merchant.api_key,
            &format!("/api/v1/orders/{}", order["id"].as_str().expect("id")),
        )
        .await
        .json();
    assert_eq!(again["items"][0]["unit_price_cents"], 250);
    assert_eq!(again["total_cents"], 750);

    let sql = app.sql().await;
    let queues: HashSet<String> = sql
        .query("SELECT queue FROM jobs", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: HashSet<String> = ["email", "webhooks", "analytics", "audit"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(queues, expected);
}

#[actix_rt::test]
async fn unknown_archived_and_mixed_currency_items_are_422_naming_the_item() {
    let app = TestApp::spawn().await;
    let merchant = app.create_merchant("Picky").await;
    let eur = app.create_product(&merchant, "EUR1", 100, 5).await;
    let usd = app
        .post_json("/api/v1/products", Some(&merchant.api_key), &json!({"sku": "USD1", "name": "Dollar", "price_cents": 100, "currency": "USD", "stock": 5}))
        .await
        .json();
    let archived = app.create_product(&merchant, "OLD", 100, 5).await;
    let del = app
        .archive_product(&merchant, archived["id"].as_str().expect("id"))
        .await;
    assert_eq!(del.status, 204);
    let other = app.create_merchant("Other").await;
    let foreign = app.create_product(&other, "THEIRS", 100, 5).await;

    for (second, what) in [
        (&archived, "archived"),
        (&foreign, "another store's"),
        (&usd, "other currency"),
    ] {
        let body = json!({"customer_email": "x@example.com", "items": [{"product_id": eur["id"], "quantity": 1}, {"product_id": second["id"], "quantity": 1}]});
        let problem = app.checkout(&merchant.id, &body, None).await.problem(422);
        assert_eq!(
            problem["errors"][0]["field"], "items[1].product_id",
            "{what}"
        );
    }
    let missing_store = app
        .checkout(&uuid::Uuid::now_v7().to_string(), &one(&eur, 1), None)
        .await;
    missing_store.problem(404);
}

#[actix_rt::test]
async fn checkout_writes_its_outbox_rows_without_notifying_inside_the_transaction() {
    let app = TestApp::spawn().await;
    let merchant = app.create_merchant("Quiet").await;
    let product = app.create_product(&merchant, "Q-1", 100, 10).await;
    let (listener, mut connection) =
        tokio_postgres::connect(&app.database_url, tokio_postgres::NoTls)
            .await
            .expect("connect");
    let (notes_tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    actix_rt::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures_util::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = notes_tx.send(n.payload().to_owned());
            }
        }
    });
    listener
        .batch_execute("LISTEN rampart_jobs")
        .await
        .expect("listen");
    for _ in 0..3 {
        assert_eq!(
            app.checkout(&merchant.id, &one(&product, 1), None)
                .await
                .status,
            201
        );
    }
    let jobs: i64 = app
        .sql()
        .await
        .query_one("SELECT count(*) FROM jobs", &[])
        .await
        .expect("jobs")
        .get(0);
    assert!(
        jobs >= 9,
        "the outbox rows are written with the orders: {jobs}"
    );
    // Notifications arrive in commit order: once our marker arrives, any notify sent by the
    // checkouts (committed before it) would have arrived first.
    app.sql()
        .await
        .batch_execute("NOTIFY rampart_jobs, 'marker'")
        .await
        .expect("notify");
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), notes.recv())
        .await
        .expect("the marker arrives")
        .expect("listening");
    assert_eq!(
        first, "marker",
        "no NOTIFY came from the checkout transactions"
    );
}
