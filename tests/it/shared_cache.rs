//! The Redis tier: several instances see each other's writes within a second; Redis stopped or
//! frozen costs no request its answer, readiness says "degraded", and the tier comes back.

use crate::proxy::{Cut, Proxy};
use crate::support::{wait_until, Merchant, OtherProcess, TestApp, TestRedis};
use serde_json::json;
use std::time::{Duration, Instant};

#[actix_rt::test]
async fn a_write_on_one_instance_is_seen_by_a_second_process_within_a_second() {
    let redis = TestRedis::start();
    let a = TestApp::builder().with_redis(&redis).spawn().await;
    let b = OtherProcess::start(&a, &redis, &[("RAMPART__RATE_LIMIT__ENABLED", "false")]).await;
    let m = a.create_merchant("Two instances").await;
    let p = a.create_product(&m, "TWO-1", 100, 10).await;
    let id = p["id"].as_str().expect("id").to_owned();
    let product = format!("/api/v1/stores/{}/products/{id}", m.id);
    let list = format!("/api/v1/stores/{}/products?limit=5", m.id);
    // Both instances hold the product and the page in memory now.
    assert_eq!(a.get(&product).await.json()["stock"], 10);
    assert_eq!(a.get(&list).await.json()["data"][0]["stock"], 10);
    assert_eq!(b.json(&product).await["stock"], 10);
    assert_eq!(b.json(&list).await["data"][0]["stock"], 10);

    let stock = a
        .post_json(
            &format!("/api/v1/products/{id}/stock"),
            Some(&m.api_key),
            &json!({"delta": 5}),
        )
        .await;
    assert_eq!(stock.status, 200);
    let written = Instant::now();
    assert_eq!(
        a.get(&product).await.json()["stock"],
        15,
        "at once on the writer"
    );
    assert_eq!(a.get(&list).await.json()["data"][0]["stock"], 15);
    wait_until(
        "the other process sees the write",
        Duration::from_secs(1),
        async || {
            b.json(&product).await["stock"] == 15 && b.json(&list).await["data"][0]["stock"] == 15
        },
    )
    .await;
    assert!(written.elapsed() < Duration::from_secs(1));
}

/// Redis's answers are what these tests read: a loaded test machine may take longer than the
/// default 100 ms, and a command that timed out would be skipped.
fn patient(s: &mut rampart::settings::Settings) {
    s.redis.command_timeout_ms = 2000;
}

/// Two instances in this process on one database and one Redis, a merchant and its product:
/// the instances, the merchant, the product's id and its storefront path.
async fn two_instances(redis: &TestRedis) -> (TestApp, TestApp, Merchant, String, String) {
    let a = TestApp::builder()
        .with_redis(redis)
        .configure(patient)
        .spawn()
        .await;
    let b = TestApp::builder()
        .with_redis(redis)
        .configure(patient)
        .beside(&a)
        .spawn()
        .await;
    let m = a.create_merchant("Two instances").await;
    let p = a.create_product(&m, "TWO-1", 100, 10).await;
    let id = p["id"].as_str().expect("id").to_owned();
    let product = format!("/api/v1/stores/{}/products/{id}", m.id);
    (a, b, m, id, product)
}

#[actix_rt::test]
async fn a_write_on_one_instance_is_seen_on_another_in_the_same_process_too() {
    let redis = TestRedis::start();
    let (a, b, m, id, product) = two_instances(&redis).await;
    assert_eq!(b.get(&product).await.json()["price_cents"], 100);
    let stock = a
        .post_json(
            &format!("/api/v1/products/{id}/stock"),
            Some(&m.api_key),
            &json!({"delta": -3}),
        )
        .await;
    assert_eq!(stock.status, 200);
    wait_until(
        "the other instance sees the write",
        Duration::from_secs(1),
        async || b.get(&product).await.json()["stock"] == 7,
    )
    .await;
    assert!(
        b.cache
            .shared
            .as_ref()
            .expect("redis tier")
            .snapshot()
            .invalidations_received
            >= 1
    );
}

#[actix_rt::test]
async fn a_miss_on_one_instance_is_answered_from_the_entry_another_shared() {
    let redis = TestRedis::start();
    let (a, b, m, id, product) = two_instances(&redis).await;
    assert_eq!(a.get(&product).await.status, 200);
    // a files its entry in Redis after answering: b reads once it is there (had b missed
    // first, it would hold its own copy in memory and never ask Redis again).
    let entry = format!("e:product:{}:{id}", m.id);
    wait_until(
        "a's entry is in redis",
        Duration::from_secs(5),
        async || redis.run(&["HEXISTS", &entry, "b"]).await == redis::Value::Int(1),
    )
    .await;
    let shared = b.cache.shared.clone().expect("redis tier");
    wait_until(
        "b finds a's entry in redis",
        Duration::from_secs(5),
        async || {
            let before = b.db.stats().snapshot().handled;
            let hit =
                b.get(&product).await.status == 200 && b.db.stats().snapshot().handled == before;
            hit && shared.snapshot().hits >= 1
        },
    )
    .await;
}

async fn storefront_survives(
    redis: &TestRedis,
    outage: impl Fn(&TestRedis),
    back: impl Fn(&TestRedis),
) {
    let app = TestApp::builder()
        .with_redis(redis)
        .configure(|s| {
            s.redis.command_timeout_ms = 100;
            s.redis.breaker_open_ms = 300;
        })
        .spawn()
        .await;
    let m = app.create_merchant("Outage").await;
    let products: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..5 {
            let p = app.create_product(&m, &format!("R-{i}"), 100, 10).await;
            ids.push(m.store_product(&p));
        }
        ids
    };
    assert_eq!(app.get(&products[0]).await.status, 200);
    let ready = app.get("/health/ready").await.json();
    assert_eq!(ready["status"], "ready", "{ready}");

    outage(redis);
    // Cached and uncached reads alike: answered, each within the command timeout's reach.
    for path in products.iter().chain(products.iter()) {
        let started = Instant::now();
        let reply = app.get(path).await;
        reply.assert_status(200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    let list = app.get(&format!("/api/v1/stores/{}/products", m.id)).await;
    assert_eq!(list.status, 200);
    // A write still lands and is seen here.
    let id = products[1].rsplit('/').next().expect("id").to_owned();
    let stock = app
        .post_json(
            &format!("/api/v1/products/{id}/stock"),
            Some(&m.api_key),
            &json!({"delta": 1}),
        )
        .await;
    assert_eq!(stock.status, 200);
    assert_eq!(app.get(&products[1]).await.json()["stock"], 11);
    // Readiness reads Redis's state as last sampled (every `health.refresh_ms`).
    wait_until(
        "readiness sees Redis down",
        Duration::from_secs(10),
        async || app.get("/health/ready").await.json()["checks"]["redis"]["status"] == "down",
    )
    .await;
    let degraded = app.get("/health/ready").await;
    assert_eq!(degraded.status, 200);
    let body = degraded.json();
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["checks"]["redis"]["status"], "down");

    back(redis);
    wait_until(
        "readiness is ready again",
        Duration::from_secs(10),
        async || app.get("/health/ready").await.json()["status"] == "ready",
    )
    .await;
    let shared = app.cache.shared.clone().expect("redis tier");
    let sets_before = shared.snapshot().hits + shared.snapshot().misses;
    app.create_product(&m, "R-after", 100, 1).await;
    let fresh = app.create_product(&m, "R-fresh", 100, 1).await;
    let path = m.store_product(&fresh);
    assert_eq!(app.get(&path).await.status, 200);
    assert!(
        shared.snapshot().hits + shared.snapshot().misses > sets_before,
        "the redis tier is used again"
    );
}

#[actix_rt::test]
async fn redis_stopped_costs_no_storefront_read_and_readiness_turns_degraded_then_ready() {
    let redis = TestRedis::start();
    storefront_survives(&redis, TestRedis::stop, TestRedis::start_again).await;
}

#[actix_rt::test]
async fn redis_frozen_with_sigstop_costs_no_storefront_read_beyond_the_command_timeout() {
    let redis = TestRedis::start();
    storefront_survives(&redis, TestRedis::freeze, TestRedis::thaw).await;
}

#[actix_rt::test]
async fn a_product_restored_on_one_instance_is_visible_on_another_that_remembered_it_absent() {
    let redis = TestRedis::start();
    // Absences remembered far longer than the test runs: what makes the restore visible within
    // 1 s can only be the invalidation, never the entry running out.
    let remember = |s: &mut rampart::settings::Settings| {
        s.cache.not_found_ttl_secs = 300;
        patient(s);
    };
    let a = TestApp::builder()
        .with_redis(&redis)
        .configure(remember)
        .spawn()
        .await;
    let b = TestApp::builder()
        .with_redis(&redis)
        .configure(remember)
        .beside(&a)
        .spawn()
        .await;
    let m = a.create_merchant("Two instances").await;
    let id = a.create_product(&m, "TWO-1", 100, 10).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let product = format!("/api/v1/stores/{}/products/{id}", m.id);
    assert_eq!(a.archive_product(&m, &id).await.status, 204);
    wait_until(
        "the other instance sees the archive",
        Duration::from_secs(1),
        async || b.get(&product).await.status == 404,
    )
    .await;
    // Remembered absent there now: no query.
    let before = b.db.stats().snapshot().handled;
    assert_eq!(b.get(&product).await.status, 404);
    assert_eq!(b.db.stats().snapshot().handled, before);

    let restored = a
        .json_request(
            awc::http::Method::PATCH,
            &format!("/api/v1/products/{id}"),
            Some(&m.api_key),
            &json!({"status": "active"}),
        )
        .await;
    assert_eq!(restored.status, 200);
    let written = Instant::now();
    assert_eq!(a.get(&product).await.status, 200, "at once on the writer");
    wait_until(
        "the other instance sees the restore",
        Duration::from_secs(1),
        async || b.get(&product).await.status == 200,
    )
    .await;
    assert!(written.elapsed() < Duration::from_secs(1));
}

/// Two instances on one database and one Redis, `a` reaching Redis through `proxy`; a merchant
/// and its product (price 100) cached by both.
async fn two_instances_one_behind(
    redis: &TestRedis,
    proxy: &Proxy,
    configure: impl FnOnce(&mut rampart::settings::Settings),
) -> (TestApp, TestApp, Merchant, String, String) {
    let through = proxy.url(&redis.url(), redis.port);
    let a = TestApp::builder()
        .configure(|s| {
            s.redis.url = Some(rampart::settings::Secret::new(through));
            patient(s);
            configure(s);
        })
        .spawn()
        .await;
    let b = TestApp::builder()
        .with_redis(redis)
        .configure(patient)
        .beside(&a)
        .spawn()
        .await;
    let m = a.create_merchant("Lossy").await;
    let p = a.create_product(&m, "LOSSY-1", 100, 10).await;
    let id = p["id"].as_str().expect("id").to_owned();
    let product = format!("/api/v1/stores/{}/products/{id}", m.id);
    for app in [&a, &b] {
        assert_eq!(app.get(&product).await.json()["price_cents"], 100);
    }
    (a, b, m, id, product)
}

async fn set_price(app: &TestApp, m: &Merchant, id: &str, price: i64) {
    let reply = app
        .json_request(
            awc::http::Method::PATCH,
            &format!("/api/v1/products/{id}"),
            Some(&m.api_key),
            &json!({"price_cents": price}),
        )
        .await;
    reply.assert_status(200);
}

/// The writer's invalidation (the tombstone, the generation and the broadcast, one pipeline)
/// is lost with its connection to Redis: it is sent again until Redis takes it, so neither
/// instance serves the older body for more than a second after the write answered.
#[actix_rt::test]
async fn an_invalidation_lost_with_its_redis_connection_is_sent_again_within_a_second() {
    let redis = TestRedis::start();
    let proxy = Proxy::start(redis.port).await;
    let (a, b, m, id, product) = two_instances_one_behind(&redis, &proxy, |_| {}).await;

    proxy.arm(b"HINCRBY", Cut::Instead);
    set_price(&a, &m, &id, 250).await;
    let written = Instant::now();
    assert_eq!(proxy.cuts(), 1, "the invalidation met the cut");
    // The writer does not read Redis's old copy while Redis still owes the invalidation.
    assert_eq!(
        a.get(&product).await.json()["price_cents"],
        250,
        "at once on the writer"
    );
    wait_until(
        "both instances serve the new price",
        Duration::from_secs(1),
        async || {
            a.get(&product).await.json()["price_cents"] == 250
                && b.get(&product).await.json()["price_cents"] == 250
        },
    )
    .await;
    assert!(written.elapsed() < Duration::from_secs(1));
    // And it stays so: nothing older comes back from either tier.
    for app in [&a, &b, &a, &b] {
        assert_eq!(app.get(&product).await.json()["price_cents"], 250);
    }
}

/// A load on `b` reads the product, then is held while `a` commits a new price and invalidates
/// it; `b` never hears of it (its subscription silenced), so it keeps what the load brings, but
/// Redis refuses the older body (the key's lease moved on): no other instance is served it.
#[actix_rt::test]
async fn a_load_that_read_before_a_commit_and_finishes_after_it_never_replaces_the_newer_body() {
    let redis = TestRedis::start();
    let proxy = Proxy::start(redis.port).await;
    let (b, a, m, id, product) = two_instances_one_behind(&redis, &proxy, |_| {}).await;
    let key = format!("product:{}:{id}", m.id);
    let (read_tx, read_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let url = b.database_url.clone();
    let product_id: uuid::Uuid = id.parse().expect("uuid");
    let loader: rampart_actors::Loader = Box::new(move || {
        Box::pin(async move {
            let sql = crate::support::connect(&url).await;
            let price: i64 = sql
                .query_one(
                    "SELECT price_cents FROM products WHERE id = $1",
                    &[&product_id],
                )
                .await
                .expect("read the product")
                .get(0);
            let _ = read_tx.send(());
            let _ = go_rx.await;
            Ok(Some(rampart_actors::Loaded {
                body: serde_json::to_vec(&json!({"price_cents": price, "late": true}))
                    .expect("json")
                    .into(),
                tag: std::sync::Arc::from("\"late\""),
                fresh_for: Duration::from_secs(60),
                negative: false,
            }))
        })
    });
    // b's memory and Redis hold the product: drop both, so b's next miss is this slow load.
    b.cache.reader.evict(&key);
    redis.run(&["DEL", &format!("e:{key}")]).await;
    let handle = b.cache.handle.clone();
    let scope = rampart::catalog::scope(m.id.parse().expect("uuid"));
    let late = actix_rt::spawn(async move { handle.load(key.into(), Some(scope), loader).await });
    read_rx.await.expect("the load read the product");

    assert_eq!(proxy.silence_subscriptions(), 1, "b's subscription");
    set_price(&a, &m, &id, 300).await;
    go_tx.send(()).expect("the load waits");
    let loaded = late.await.expect("the load's task").expect("the load");
    let body: serde_json::Value =
        serde_json::from_slice(&loaded.expect("an entry").body).expect("json");
    assert_eq!(
        body["price_cents"], 100,
        "the held load read before the commit"
    );
    let shared = b.cache.shared.clone().expect("redis tier");
    wait_until(
        "Redis refuses the late load",
        Duration::from_secs(5),
        async || shared.snapshot().stale_loads_refused == 1,
    )
    .await;
    // A third instance, whose memory is empty, reads through Redis.
    let c = TestApp::builder()
        .with_redis(&redis)
        .beside(&a)
        .spawn()
        .await;
    let body = c.get(&product).await.json();
    assert_eq!(body["price_cents"], 300, "{body}");
    assert!(
        body.get("late").is_none(),
        "the late load reached Redis: {body}"
    );
    assert_eq!(a.get(&product).await.json()["price_cents"], 300);
}

/// The subscription's connection goes silent without breaking (a middlebox dropped it): the
/// instance's heartbeats stop coming back, it subscribes again and drops what it holds, so
/// another instance's write reaches it though the broadcast was never heard.
#[actix_rt::test]
async fn a_subscription_gone_silent_is_noticed_by_its_keepalive_and_the_instance_catches_up() {
    let redis = TestRedis::start();
    let proxy = Proxy::start(redis.port).await;
    let (a, b, m, id, product) = two_instances_one_behind(&redis, &proxy, |s| {
        s.redis.keepalive_ms = 200;
        s.redis.breaker_open_ms = 200;
    })
    .await;
    assert_eq!(proxy.silence_subscriptions(), 1, "a's subscription");
    set_price(&b, &m, &id, 400).await;
    wait_until(
        "the silent instance catches up",
        Duration::from_secs(5),
        async || a.get(&product).await.json()["price_cents"] == 400,
    )
    .await;
    let shared = a.cache.shared.as_ref().expect("redis tier").snapshot();
    assert!(shared.resubscribed >= 1, "{shared:?}");
    assert_eq!(
        shared.invalidations_received, 0,
        "the broadcast was never heard"
    );
}
