//! Read replicas: a real streaming standby (`pg_basebackup -R`) beside the primary. Catalog reads
//! that miss the cache go to it once it has caught up; a merchant reads its own write at once;
//! a replica that lags or is stopped is skipped, never an error to the client.

use crate::support::{connect, wait_until, Merchant, TestApp, TestPg};
use awc::http::Method;
use rampart::pg_cluster::Cluster;
use rampart::settings::Secret;
use serde_json::json;
use std::time::Duration;

fn replica_reads(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("db_replica_reads_total{replica=\"postgres_replica_0\"} "))
        .and_then(|n| n.trim().parse().ok())
        .expect("db_replica_reads_total of the replica")
}

fn replica_lag_ms(metrics: &str) -> i64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("db_replica_lag_ms{replica=\"postgres_replica_0\"} "))
        .and_then(|n| n.trim().parse().ok())
        .expect("db_replica_lag_ms of the replica")
}

/// `PATCH` with the strong tag just read (the contract requires `If-Match`).
async fn set_price(app: &TestApp, merchant: &Merchant, path: &str, price: i64) {
    let current = app.get_as(&merchant.api_key, path).await;
    let tag = current.header("etag").expect("etag").to_owned();
    let req = app
        .client
        .request(Method::PATCH, app.url(path))
        .bearer_auth(&merchant.api_key)
        .insert_header(("If-Match", tag))
        .content_type("application/json");
    let body = json!({"price_cents": price}).to_string();
    let reply = app.send(req, Some(body.as_bytes())).await;
    reply.assert_status(200);
}

#[actix_rt::test]
async fn catalog_reads_go_to_a_fresh_replica_and_writers_read_their_writes() {
    let pg: &'static TestPg = Box::leak(Box::new(TestPg::dedicated()));
    let primary_url = pg.fresh_database().await;
    let database = primary_url.rsplit('/').next().expect("name").to_owned();
    let standby_dir = pg.cluster.data_dir().with_extension("standby");
    let standby: Cluster = pg
        .cluster
        .standby(&standby_dir)
        .expect("a streaming standby");
    standby.stop_when_process_exits();
    let standby_url = standby.url(&database);
    let app = TestApp::builder()
        .on(pg)
        .database(&primary_url)
        .configure(|s| {
            s.database.replica_urls = vec![Secret::new(standby_url.clone())];
            s.database.replica_max_lag_ms = 500;
        })
        .spawn()
        .await;
    let shop = app.create_merchant("Replicated").await;
    let other = app.create_merchant("Quiet").await;
    let lamp = app.create_product(&shop, "LAMP-1", 1000, 5).await;
    let chair = app.create_product(&other, "CHAIR-1", 2000, 5).await;
    let lamp_path = format!("/api/v1/products/{}", lamp["id"].as_str().expect("id"));
    let chair_path = format!("/api/v1/products/{}", chair["id"].as_str().expect("id"));

    // Once the standby has replayed past the writes, reads of the catalog are served by it.
    wait_until(
        "the standby serves catalog reads",
        Duration::from_secs(10),
        async || {
            let reply = app.get_as(&other.api_key, &chair_path).await;
            assert_eq!(reply.status, 200);
            replica_reads(&app.metrics().await) > 0
        },
    )
    .await;

    // A writer reads its own write at once, every time: never the replica's older copy.
    for price in 1001..1041 {
        set_price(&app, &shop, &lamp_path, price).await;
        let read = app.get_as(&shop.api_key, &lamp_path).await;
        assert_eq!(
            read.json()["price_cents"],
            price,
            "read after write {price}"
        );
    }

    // A standby whose replay stops falls behind: past the allowed lag it is skipped, and the
    // writer still reads what it wrote.
    let standby_sql = connect(&standby_url).await;
    standby_sql
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .expect("pause replay");
    set_price(&app, &shop, &lamp_path, 5000).await;
    assert_eq!(
        app.get_as(&shop.api_key, &lamp_path).await.json()["price_cents"],
        5000
    );
    // Writes keep moving the primary on while the standby stands still.
    let primary_sql = connect(&primary_url).await;
    wait_until("the standby counts as lagging", Duration::from_secs(10), async || {
        primary_sql
            .batch_execute("CREATE TABLE IF NOT EXISTS lag_probe (x int); INSERT INTO lag_probe VALUES (1)")
            .await
            .expect("primary write");
        replica_lag_ms(&app.metrics().await) > 600
    })
    .await;
    let before = replica_reads(&app.metrics().await);
    for _ in 0..20 {
        let reply = app.get_as(&other.api_key, &chair_path).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            app.get_as(&shop.api_key, &lamp_path).await.json()["price_cents"],
            5000
        );
    }
    assert_eq!(
        replica_reads(&app.metrics().await),
        before,
        "a lagging replica is skipped"
    );

    // Caught up again, it serves again; stopped, it is skipped without an error.
    standby_sql
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .expect("resume replay");
    wait_until(
        "the standby serves again",
        Duration::from_secs(10),
        async || {
            assert_eq!(app.get_as(&other.api_key, &chair_path).await.status, 200);
            replica_reads(&app.metrics().await) > before
        },
    )
    .await;
    drop(standby_sql);
    standby.stop().expect("stop the standby");
    for _ in 0..50 {
        let reply = app.get_as(&other.api_key, &chair_path).await;
        reply.assert_status(200);
        let store = app
            .get(&format!("/api/v1/stores/{}/products", other.id))
            .await;
        assert_eq!(store.status, 200);
    }
    app.stop().await;
}
