//! The storefront served from memory: one load for many misses, writes visible at once, 304s
//! without the database, stale-if-error, tenants kept apart.

use crate::support::{wait_until, TestApp, TestPg};
use futures_util::future::join_all;
use serde_json::json;
use std::time::Duration;

fn db_handled(app: &TestApp) -> u64 {
    app.db.stats().snapshot().handled
}

#[actix_rt::test]
async fn a_thousand_concurrent_reads_of_an_uncached_product_make_one_database_load() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Popular").await;
    let p = app.create_product(&m, "POP-1", 100, 5).await;
    let path = m.store_product(&p);
    let before = (db_handled(&app), app.cache.reader.snapshot().loads);
    let replies = join_all((0..1000).map(|_| app.get(&path))).await;
    for reply in &replies {
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["sku"], "POP-1");
    }
    let after = (db_handled(&app), app.cache.reader.snapshot().loads);
    assert_eq!(after.1 - before.1, 1, "one load");
    assert_eq!(after.0 - before.0, 1, "one database command");
    assert!(app.cache.reader.snapshot().hits > 0);
}

#[actix_rt::test]
async fn every_write_is_visible_on_the_next_storefront_read_of_the_same_instance() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Writes").await;
    let p = app.create_product(&m, "W-1", 100, 10).await;
    let id = p["id"].as_str().expect("id").to_owned();
    let path = format!("/api/v1/stores/{}/products/{id}", m.id);
    let read = async || app.get(&path).await;
    assert_eq!(read().await.json()["price_cents"], 100);

    let tag = read().await.header("etag").expect("etag").to_owned();
    let patched = app
        .send(
            app.client
                .request(
                    awc::http::Method::PATCH,
                    app.url(&format!("/api/v1/products/{id}")),
                )
                .bearer_auth(&m.api_key)
                .content_type("application/json")
                .insert_header(("If-Match", tag)),
            Some(br#"{"price_cents": 250}"#),
        )
        .await;
    assert_eq!(patched.status, 200);
    assert_eq!(read().await.json()["price_cents"], 250, "after PATCH");

    let stock = format!("/api/v1/products/{id}/stock");
    let delta = app
        .post_json(&stock, Some(&m.api_key), &json!({"delta": 5}))
        .await;
    assert_eq!(delta.status, 200);
    assert_eq!(read().await.json()["stock"], 15, "after a stock delta");

    let order = app
        .checkout(&m.id, &json!({"customer_email": "c@example.com", "items": [{"product_id": id, "quantity": 4}]}), None)
        .await;
    assert_eq!(order.status, 201);
    assert_eq!(read().await.json()["stock"], 11, "after a checkout");

    let cancel = app
        .post_json(
            &format!(
                "/api/v1/orders/{}/status",
                order.json()["id"].as_str().expect("id")
            ),
            Some(&m.api_key),
            &json!({"status": "cancelled"}),
        )
        .await;
    assert_eq!(cancel.status, 200);
    assert_eq!(read().await.json()["stock"], 15, "after a cancel");

    let archive = app.archive_product(&m, &id).await;
    assert_eq!(archive.status, 204);
    assert_eq!(read().await.status, 404, "after archiving");
}

#[actix_rt::test]
async fn if_none_match_with_the_current_tag_is_304_without_touching_postgresql() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Tags").await;
    let p = app.create_product(&m, "T-1", 100, 1).await;
    let path = m.store_product(&p);
    let tag = app
        .get(&path)
        .await
        .header("etag")
        .expect("etag")
        .to_owned();
    let handled = db_handled(&app);
    for _ in 0..20 {
        let reply = app
            .send(
                app.client
                    .get(app.url(&path))
                    .insert_header(("If-None-Match", tag.as_str())),
                None,
            )
            .await;
        assert_eq!(reply.status, 304);
        assert_eq!(reply.header("etag"), Some(tag.as_str()));
    }
    assert_eq!(db_handled(&app), handled, "no database command");
}

#[actix_rt::test]
async fn postgresql_down_a_cached_product_still_answers_and_an_uncached_one_is_503_at_once() {
    let pg: &'static TestPg = Box::leak(Box::new(TestPg::dedicated()));
    // Entries are stale at once: every read tries a load, and only stale-if-error answers.
    let app = TestApp::builder()
        .on(pg)
        .configure(|s| s.cache.product_ttl_secs = 0)
        .spawn()
        .await;
    let m = app.create_merchant("Outage").await;
    let cached = app.create_product(&m, "C-1", 100, 1).await;
    let uncached = app.create_product(&m, "U-1", 100, 1).await;
    let path = |p: &serde_json::Value| m.store_product(p);
    assert_eq!(app.get(&path(&cached)).await.status, 200);

    // `fast`: the test cluster commits asynchronously, and a crash would lose the products.
    pg.cluster.stop_with("fast").expect("stop PostgreSQL");
    let served = app.get(&path(&cached)).await;
    served.assert_status(200);
    assert_eq!(served.json()["sku"], "C-1");
    assert!(app.cache.reader.snapshot().stale_hits >= 1);
    let started = std::time::Instant::now();
    let missing = app.get(&path(&uncached)).await;
    missing.problem(503);
    assert!(missing.header("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    pg.cluster.start_again().expect("start PostgreSQL");
    wait_until("fresh reads again", Duration::from_secs(10), async || {
        app.get(&path(&uncached)).await.status == 200
    })
    .await;
}

#[actix_rt::test]
async fn postgresql_down_a_cached_list_page_still_answers_stale() {
    let pg: &'static TestPg = Box::leak(Box::new(TestPg::dedicated()));
    // Pages are stale at once: every read tries a load, and only stale-if-error answers.
    let app = TestApp::builder()
        .on(pg)
        .configure(|s| s.cache.list_ttl_secs = 0)
        .spawn()
        .await;
    let m = app.create_merchant("Listed").await;
    app.create_product(&m, "L-1", 100, 1).await;
    let list = format!("/api/v1/stores/{}/products", m.id);
    let cached = app.get(&list).await;
    assert_eq!(cached.status, 200);

    // `fast`: the test cluster commits asynchronously, and a crash would lose the products.
    pg.cluster.stop_with("fast").expect("stop PostgreSQL");
    let stale_hits = app.cache.reader.snapshot().stale_hits;
    let served = app.get(&list).await;
    served.assert_status(200);
    assert_eq!(served.body, cached.body, "the cached page, stale");
    assert_eq!(served.json()["data"][0]["sku"], "L-1");
    assert!(app.cache.reader.snapshot().stale_hits > stale_hits);
    pg.cluster.start_again().expect("start PostgreSQL");
}

#[actix_rt::test]
async fn one_merchant_is_never_served_another_merchants_cached_product() {
    let app = TestApp::spawn().await;
    let a = app.create_merchant("A").await;
    let b = app.create_merchant("B").await;
    let pa = app.create_product(&a, "SAME", 100, 1).await;
    let pb = app.create_product(&b, "SAME", 200, 1).await;
    let (ida, idb) = (
        pa["id"].as_str().expect("id"),
        pb["id"].as_str().expect("id"),
    );
    // Both cached under their own stores...
    assert_eq!(
        app.get(&format!("/api/v1/stores/{}/products/{ida}", a.id))
            .await
            .json()["price_cents"],
        100
    );
    assert_eq!(
        app.get(&format!("/api/v1/stores/{}/products/{idb}", b.id))
            .await
            .json()["price_cents"],
        200
    );
    // ...and never across them.
    app.get(&format!("/api/v1/stores/{}/products/{ida}", b.id))
        .await
        .problem(404);
    app.get(&format!("/api/v1/stores/{}/products/{idb}", a.id))
        .await
        .problem(404);
}

#[actix_rt::test]
async fn list_pages_are_served_from_memory_and_every_write_shows_in_the_next_one() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Lists").await;
    let p = app.create_product(&m, "L-1", 100, 10).await;
    let id = p["id"].as_str().expect("id").to_owned();
    let first = format!("/api/v1/stores/{}/products?limit=10", m.id);
    let page = async || app.get(&first).await.json();
    assert_eq!(page().await["data"].as_array().expect("data").len(), 1);
    let handled = db_handled(&app);
    for _ in 0..10 {
        assert_eq!(page().await["data"][0]["sku"], "L-1");
    }
    assert_eq!(db_handled(&app), handled, "served from memory");

    app.create_product(&m, "L-2", 100, 10).await;
    assert_eq!(
        page().await["data"].as_array().expect("data").len(),
        2,
        "after a create"
    );
    let order = app
        .checkout(&m.id, &json!({"customer_email": "c@example.com", "items": [{"product_id": id, "quantity": 3}]}), None)
        .await;
    assert_eq!(order.status, 201);
    let after = page().await;
    let bought = after["data"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["id"] == id.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(bought["stock"], 7, "after a checkout");
    // Another store's list is its own.
    let other = app.create_merchant("Other").await;
    let theirs = app
        .get(&format!("/api/v1/stores/{}/products?limit=10", other.id))
        .await
        .json();
    assert_eq!(theirs["data"], json!([]));
}

#[actix_rt::test]
async fn shrink_drops_the_in_process_tier_to_the_fraction_asked_for_and_metrics_show_it() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Shrink").await;
    for i in 0..20 {
        let p = app.create_product(&m, &format!("S-{i}"), 100, 1).await;
        let path = m.store_product(&p);
        assert_eq!(app.get(&path).await.status, 200);
    }
    let full = app.cache.reader.snapshot();
    assert!(full.entries >= 20, "{full:?}");
    let dropped = app
        .cache
        .handle
        .call(rampart_actors::Shrink(0.5))
        .await
        .expect("shrink");
    let half = app.cache.reader.snapshot();
    assert!(dropped >= 10, "{dropped} dropped");
    assert!(half.bytes <= full.bytes / 2, "{half:?} after {full:?}");

    let text = app.metrics().await;
    for family in [
        r#"cache_hits_total{tier="memory"}"#,
        r#"cache_misses_total{tier="memory"}"#,
        r#"cache_hit_ratio{tier="memory"}"#,
        r#"cache_entries{tier="memory"}"#,
        r#"cache_bytes{tier="memory"}"#,
        r#"cache_coalesced_total{tier="memory"}"#,
    ] {
        assert!(text.contains(family), "{family} in {text}");
    }
}

#[actix_rt::test]
async fn repeated_reads_of_a_missing_product_cost_one_database_query_not_one_each() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Absent").await;
    let missing = format!("/api/v1/stores/{}/products/{}", m.id, uuid::Uuid::now_v7());
    let before = db_handled(&app);
    for _ in 0..20 {
        app.get(&missing).await.problem(404);
    }
    let replies = join_all((0..50).map(|_| app.get(&missing))).await;
    assert!(replies.iter().all(|r| r.status == 404));
    assert_eq!(db_handled(&app) - before, 1, "one query for 70 reads");
    // Another missing id is its own query.
    let other = format!("/api/v1/stores/{}/products/{}", m.id, uuid::Uuid::now_v7());
    app.get(&other).await.problem(404);
    assert_eq!(db_handled(&app) - before, 2);
}

#[actix_rt::test]
async fn an_archived_product_is_remembered_absent_until_restored_and_then_visible_at_once() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Restore").await;
    let p = app.create_product(&m, "BACK-1", 100, 5).await;
    let path = m.store_product(&p);
    // A product created is visible at once, however its id was read before.
    assert_eq!(app.get(&path).await.status, 200);
    assert_eq!(
        app.archive_product(&m, p["id"].as_str().unwrap())
            .await
            .status,
        204
    );
    let before = db_handled(&app);
    for _ in 0..20 {
        app.get(&path).await.problem(404);
    }
    assert_eq!(db_handled(&app) - before, 1, "one query for 20 reads");

    let restored = app
        .json_request(
            awc::http::Method::PATCH,
            &format!("/api/v1/products/{}", p["id"].as_str().unwrap()),
            Some(&m.api_key),
            &json!({"status": "active"}),
        )
        .await;
    restored.assert_status(200);
    let visible = app.get(&path).await;
    assert_eq!(visible.status, 200, "the next read sees the restore");
    assert_eq!(visible.json()["status"], "active");
}

#[actix_rt::test]
async fn an_absence_is_remembered_only_for_not_found_ttl_secs() {
    let app = TestApp::builder()
        .configure(|s| s.cache.not_found_ttl_secs = 1)
        .spawn()
        .await;
    let m = app.create_merchant("Brief").await;
    let missing = format!("/api/v1/stores/{}/products/{}", m.id, uuid::Uuid::now_v7());
    let before = db_handled(&app);
    app.get(&missing).await.problem(404);
    app.get(&missing).await.problem(404);
    assert_eq!(db_handled(&app) - before, 1);
    wait_until(
        "the absence is forgotten and asked again",
        Duration::from_secs(5),
        async || {
            app.get(&missing).await.problem(404);
            db_handled(&app) - before >= 2
        },
    )
    .await;

    // 0: never remembered.
    let never = TestApp::builder()
        .configure(|s| s.cache.not_found_ttl_secs = 0)
        .spawn()
        .await;
    let m = never.create_merchant("Never").await;
    let missing = format!("/api/v1/stores/{}/products/{}", m.id, uuid::Uuid::now_v7());
    let before = db_handled(&never);
    for _ in 0..3 {
        never.get(&missing).await.problem(404);
    }
    assert_eq!(db_handled(&never) - before, 3);
}
