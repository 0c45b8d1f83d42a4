//! The guardians at the edge: rate limits (each class on its own, per client, across instances
//! through Redis, in process without it) and the circuits of the dependencies.

use crate::support::{wait_until, OtherProcess, TestApp, TestPg, TestRedis, ADMIN_TOKEN};
use rampart::settings::{RateLimitClass, Settings};
use rampart_actors::{CallError, Crash, Pressure};
use serde_json::json;
use std::time::{Duration, Instant};

fn storefront_limit(limit: u32, period_secs: u64) -> impl FnOnce(&mut Settings) {
    move |s| {
        s.rate_limit.enabled = true;
        s.rate_limit.classes.storefront = RateLimitClass { limit, period_secs };
    }
}

fn header_u64(reply: &crate::support::Reply, name: &str) -> u64 {
    reply
        .header(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .parse()
        .expect("a number")
}

#[actix_rt::test]
async fn a_limited_route_tells_its_budget_and_refuses_past_it_with_429_and_retry_after() {
    let app = TestApp::builder()
        .configure(storefront_limit(3, 60))
        .spawn()
        .await;
    let m = app.create_merchant("Limits").await;
    let product = app.create_product(&m, "L-1", 100, 5).await;
    let path = m.store_product(&product);
    for remaining in [2, 1, 0] {
        let reply = app.get(&path).await;
        assert_eq!(reply.status, 200);
        assert_eq!(header_u64(&reply, "ratelimit-limit"), 3);
        assert_eq!(header_u64(&reply, "ratelimit-remaining"), remaining);
        let reset = header_u64(&reply, "ratelimit-reset");
        assert!((1..=60).contains(&reset), "reset {reset}");
    }
    let refused = app.get(&path).await;
    assert_eq!(refused.problem(429)["type"], "/problems/rate-limited");
    let retry_after = header_u64(&refused, "retry-after");
    // 3 per 60 s: one more is allowed 20 s after the first.
    assert!(
        (19..=20).contains(&retry_after),
        "retry after {retry_after}"
    );
    assert_eq!(header_u64(&refused, "ratelimit-reset"), retry_after);
    assert_eq!(header_u64(&refused, "ratelimit-remaining"), 0);

    // A checkout counts against its own class only.
    let body = json!({"customer_email": "c@example.com",
                      "items": [{"product_id": product["id"], "quantity": 1}]});
    let checkout = app.checkout(&m.id, &body, None).await;
    checkout.assert_status(201);
    assert!(checkout.header("ratelimit-limit").is_some());

    // Ops endpoints are never limited.
    for _ in 0..10 {
        for ops in ["/health", "/health/ready", "/metrics"] {
            let reply = app.get(ops).await;
            assert_eq!(reply.status, 200, "{ops}");
            assert!(reply.header("ratelimit-limit").is_none(), "{ops}");
        }
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"rate_limit_decisions_total{class="storefront",decision="denied"} 1"#),
        "{metrics}"
    );
}

async fn status_forwarded_for(app: &TestApp, path: &str, forwarded: &'static str) -> u16 {
    let request = app
        .client
        .get(app.url(path))
        .insert_header(("X-Forwarded-For", forwarded));
    app.send(request, None).await.status.as_u16()
}

#[actix_rt::test]
async fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
    let direct = TestApp::builder()
        .configure(storefront_limit(2, 60))
        .spawn()
        .await;
    let m = direct.create_merchant("Direct").await;
    let path = format!("/api/v1/stores/{}/products", m.id);
    let from = |forwarded| status_forwarded_for(&direct, &path, forwarded);
    // From an untrusted peer, a new address per request changes nothing: the peer is the client.
    assert_eq!(from("1.1.1.1").await, 200);
    assert_eq!(from("2.2.2.2").await, 200);
    assert_eq!(from("3.3.3.3").await, 429);

    let proxied = TestApp::builder()
        .configure(storefront_limit(2, 60))
        .configure(|s| s.server.trusted_proxies = vec!["127.0.0.0/8".into()])
        .spawn()
        .await;
    let m = proxied.create_merchant("Proxied").await;
    let path = format!("/api/v1/stores/{}/products", m.id);
    let from = |forwarded| status_forwarded_for(&proxied, &path, forwarded);
    assert_eq!(from("198.51.100.7").await, 200);
    assert_eq!(from("198.51.100.7").await, 200);
    assert_eq!(from("198.51.100.7").await, 429);
    // A client cannot escape by writing a hop of its own left of the one the proxy added.
    assert_eq!(from("6.6.6.6, 198.51.100.7").await, 429);
    // Another client behind the same proxy has its own budget.
    assert_eq!(from("198.51.100.8").await, 200);
}

#[actix_rt::test]
async fn three_instances_on_one_redis_hold_the_limit_together_and_each_limits_alone_without_it() {
    let redis = TestRedis::start();
    let a = TestApp::builder()
        .with_redis(&redis)
        .configure(storefront_limit(100, 60))
        .spawn()
        .await;
    let limit = [
        ("RAMPART__RATE_LIMIT__ENABLED", "true"),
        ("RAMPART__RATE_LIMIT__CLASSES__STOREFRONT__LIMIT", "100"),
        (
            "RAMPART__RATE_LIMIT__CLASSES__STOREFRONT__PERIOD_SECS",
            "60",
        ),
    ];
    let b = OtherProcess::start(&a, &redis, &limit).await;
    let c = OtherProcess::start(&a, &redis, &limit).await;
    let m = a.create_merchant("Shared limits").await;
    let path = format!("/api/v1/stores/{}/products", m.id);
    let get = async |base: &str, client: &awc::Client| {
        let reply = client.get(format!("{base}{path}")).send().await;
        reply.map(|r| r.status().as_u16()).unwrap_or(0)
    };
    let a_base = a.url("");
    let started = Instant::now();
    let mut admitted = 0;
    for round in 0..100 {
        let statuses = futures_util::future::join3(
            get(&a_base, &a.client),
            get(&b.base, &b.client),
            get(&c.base, &c.client),
        )
        .await;
        for status in [statuses.0, statuses.1, statuses.2] {
            assert!(status == 200 || status == 429, "round {round}: {status}");
            admitted += u32::from(status == 200);
        }
    }
    // 100 per 60 s: one more every 0.6 s while the 300 requests ran.
    let refill = (started.elapsed().as_secs_f64() / 0.6).ceil() as u32;
    assert!(
        (100..=100 + refill).contains(&admitted),
        "{admitted} admitted in total (refill {refill})"
    );

    // Redis gone: every instance limits on its own at once, never unlimited.
    redis.stop();
    for (base, client) in [(&a_base, &a.client), (&b.base, &b.client)] {
        let mut statuses = Vec::new();
        for _ in 0..130 {
            statuses.push(get(base, client).await);
        }
        let ok = statuses.iter().filter(|s| **s == 200).count();
        let limited = statuses.iter().filter(|s| **s == 429).count();
        assert_eq!(ok + limited, 130, "{statuses:?}");
        assert!((100..=110).contains(&ok), "{base}: {ok} admitted locally");
    }
    let metrics = a.metrics().await;
    let fallbacks = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rate_limit_fallbacks_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("rate_limit_fallbacks_total");
    assert!(fallbacks >= 130, "{fallbacks} fallbacks");
}

#[actix_rt::test]
async fn leased_requests_are_counted_in_redis_so_instances_together_never_pass_the_limit() {
    // 1000 per hour: a lease is 10 requests, and one more is allowed every 3.6 s.
    let redis = TestRedis::start();
    let a = TestApp::builder()
        .with_redis(&redis)
        .configure(storefront_limit(1000, 3600))
        .spawn()
        .await;
    let b = OtherProcess::start(
        &a,
        &redis,
        &[
            ("RAMPART__RATE_LIMIT__ENABLED", "true"),
            ("RAMPART__RATE_LIMIT__CLASSES__STOREFRONT__LIMIT", "1000"),
            (
                "RAMPART__RATE_LIMIT__CLASSES__STOREFRONT__PERIOD_SECS",
                "3600",
            ),
        ],
    )
    .await;
    let m = a.create_merchant("Leases").await;
    let path = format!("/api/v1/stores/{}/products", m.id);
    let started = Instant::now();
    let mut admitted = 0u32;
    for _ in 0..650 {
        let (x, y) = futures_util::future::join(
            a.client.get(a.url(&path)).send(),
            b.client.get(format!("{}{path}", b.base)).send(),
        )
        .await;
        for status in [x, y].map(|r| r.map(|r| r.status().as_u16()).unwrap_or(0)) {
            assert!(status == 200 || status == 429, "{status}");
            admitted += u32::from(status == 200);
        }
    }
    let refill = (started.elapsed().as_secs_f64() / 3.6).ceil() as u32;
    // Every leased request was counted in Redis when granted: never more than the limit plus
    // what refilled; what an instance holds unspent (a lease and a top-up) is at most 20 each.
    assert!(
        (1000 - 2 * 20..=1000 + refill).contains(&admitted),
        "{admitted} admitted (refill {refill})"
    );
}

#[actix_rt::test]
async fn postgresql_down_opens_its_circuit_and_503s_carry_the_time_left_until_it_closes_again() {
    let pg: &'static TestPg = Box::leak(Box::new(TestPg::dedicated()));
    let app = TestApp::builder()
        .on(pg)
        .configure(|s| {
            s.breakers.minimum_calls = 3;
            s.breakers.window = 5;
            s.breakers.open_ms = 4000;
            s.breakers.half_open_probes = 1;
            // Stale at once: every storefront read tries PostgreSQL first.
            s.cache.product_ttl_secs = 0;
        })
        .spawn()
        .await;
    let m = app.create_merchant("Circuit").await;
    let product = app.create_product(&m, "P-1", 100, 1).await;
    assert_eq!(app.get(&m.store_product(&product)).await.status, 200);

    pg.cluster.stop_with("fast").expect("stop PostgreSQL");
    wait_until("the circuit opens", Duration::from_secs(20), async || {
        let reply = app.get_as(&m.api_key, "/api/v1/products").await;
        assert_eq!(reply.status, 503);
        reply.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("paused"))
    })
    .await;
    let refused = app.get_as(&m.api_key, "/api/v1/products").await;
    refused.problem(503);
    let retry_after = header_u64(&refused, "retry-after");
    assert!((1..=4).contains(&retry_after), "retry after {retry_after}");
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.json()["checks"]["circuit.postgres"]["state"], "open");
    // Behind the open circuit, the storefront answers from its last copy.
    let stale = app.get(&m.store_product(&product)).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.json()["sku"], "P-1");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"circuit_state{circuit="postgres"} 2"#),
        "{metrics}"
    );

    pg.cluster.start_again().expect("start PostgreSQL");
    wait_until("the circuit closes", Duration::from_secs(20), async || {
        app.get_as(&m.api_key, "/api/v1/products").await.status == 200
    })
    .await;
    let ready = app.get("/health/ready").await;
    assert_eq!(
        ready.json()["checks"]["circuit.postgres"]["state"],
        "closed"
    );
}

#[actix_rt::test]
async fn memory_forced_critical_sheds_all_but_ops_and_shrinks_the_cache_until_it_lifts() {
    let app = TestApp::builder()
        .configure(|s| {
            s.rate_limit.enabled = true;
            s.memory.soft_limit_mb = 4096;
            s.memory.hard_limit_mb = 8192;
            s.memory.cache_keep_percent = 0;
        })
        .spawn()
        .await;
    let m = app.create_merchant("Pressure").await;
    let product = app.create_product(&m, "M-1", 100, 5).await;
    let path = m.store_product(&product);
    assert_eq!(app.get(&path).await.status, 200);
    assert!(app.cache.reader.snapshot().entries >= 1);

    // An injected pressure source: 16 GiB more than the process holds.
    app.actors
        .memory
        .call(Pressure(16 << 30))
        .await
        .expect("pressure");
    let shed = app.get(&path).await;
    assert_eq!(shed.problem(503)["type"], "/problems/overloaded");
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert!(
        shed.header("ratelimit-remaining").is_some(),
        "a limited route's 503 tells its budget"
    );
    let checkout = app
        .checkout(
            &m.id,
            &json!({"customer_email": "c@example.com",
            "items": [{"product_id": product["id"], "quantity": 1}]}),
            None,
        )
        .await;
    assert_eq!(checkout.status, 503, "a checkout is shed too");
    assert_eq!(app.get("/health").await.status, 200, "never shed");
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "degraded");
    assert_eq!(ready.json()["checks"]["memory"]["level"], "critical");
    wait_until("the cache shrinks", Duration::from_secs(5), async || {
        app.cache.reader.snapshot().entries == 0
    })
    .await;

    app.actors
        .memory
        .call(Pressure(0))
        .await
        .expect("pressure lifted");
    assert_eq!(app.get(&path).await.status, 200);
    assert_eq!(app.get("/health/ready").await.json()["status"], "ready");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"overload_shed_total{lane="reads"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"overload_shed_total{lane="writes"} 1"#),
        "{metrics}"
    );
}

#[actix_rt::test]
async fn a_crash_injected_into_each_actor_restarts_it_and_the_service_keeps_serving() {
    let app = TestApp::builder()
        .configure(|s| {
            s.rate_limit.enabled = true;
            s.jobs.enabled = true;
            s.jobs.poll_interval_ms = 100;
        })
        .spawn()
        .await;
    let m = app.create_merchant("Crashes").await;
    let product = app.create_product(&m, "X-1", 100, 5).await;
    let a = &app.actors;
    let crashes = [
        ("db", a.db.call(Crash).await),
        ("db_probe", a.probe.call(Crash).await),
        ("cache", a.cache.call(Crash).await),
        ("breakers", a.breakers.call(Crash).await),
        ("memory", a.memory.call(Crash).await),
        (
            "limiter",
            a.limiter.as_ref().expect("limiter").call(Crash).await,
        ),
        ("jobs", a.jobs.as_ref().expect("jobs").call(Crash).await),
    ];
    for (name, outcome) in crashes {
        assert!(
            matches!(outcome, Err(CallError::Panicked)),
            "{name}: {outcome:?}"
        );
    }
    assert_eq!(app.get(&m.store_product(&product)).await.status, 200);
    assert_eq!(app.get_as(&m.api_key, "/api/v1/products").await.status, 200);
    // The restarted dispatcher still runs the jobs of a new order.
    let body = json!({"customer_email": "c@example.com", "items": [{"product_id": product["id"], "quantity": 1}]});
    assert_eq!(app.checkout(&m.id, &body, None).await.status, 201);
    let sql = app.sql().await;
    wait_until(
        "the new order's jobs ran",
        Duration::from_secs(20),
        async || {
            let open: i64 = sql
                .query_one("SELECT count(*) FROM jobs WHERE status <> 'succeeded'", &[])
                .await
                .unwrap()
                .get(0);
            open == 0
        },
    )
    .await;
    let ready = app.get("/health/ready").await;
    ready.assert_status(200);
    for name in [
        "db", "db_probe", "cache", "breakers", "memory", "limiter", "jobs",
    ] {
        assert_eq!(
            ready.json()["checks"][format!("actor.{name}")]["restarts"],
            1,
            "{name}"
        );
    }
    let stats = app
        .send(
            app.client
                .get(app.url("/api/v1/ops/stats"))
                .bearer_auth(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(stats.status, 200);
    let actors = stats.json()["actors"].as_array().expect("actors").len();
    assert_eq!(
        actors, 7,
        "breakers, db, db_probe, cache, limiter, memory, jobs"
    );

    // Past its intensity (5 within 10 s by default) an actor is failed, and readiness names it.
    for _ in 0..5 {
        let _ = a.breakers.call(Crash).await;
    }
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["checks"]["actor.breakers"]["state"], "failed");
}

#[actix_rt::test]
async fn slow_requests_and_slow_queries_are_logged_with_their_request_id() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Slow").await;
    let log = std::env::temp_dir().join(format!("rampart-slow-{}.log", std::process::id()));
    let other = OtherProcess::logging_to(
        &app,
        &[
            ("RAMPART__LOG__FORMAT", "json"),
            ("RAMPART__LOG__FILTER", "warn"),
            ("RAMPART__LOG__SLOW_REQUEST_MS", "1"),
            ("RAMPART__LOG__SLOW_QUERY_MS", "1"),
        ],
        &log,
    )
    .await;
    // A list that misses the cache runs a query; at a 1 ms threshold both are slow.
    let reply = other
        .client
        .get(format!(
            "{}/api/v1/stores/{}/products?q=slow",
            other.base, m.id
        ))
        .insert_header(("X-Request-Id", "slow-req-0001"))
        .send()
        .await
        .expect("request");
    assert_eq!(reply.status(), 200);
    wait_until(
        "both lines are logged",
        Duration::from_secs(10),
        async || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .filter(|l: &serde_json::Value| l.to_string().contains("slow-req-0001"))
                .collect();
            let has = |what: &str| lines.iter().any(|l| l["message"] == what);
            has("slow request") && has("slow query")
        },
    )
    .await;
    drop(other);
    let _ = std::fs::remove_file(&log);
}

#[actix_rt::test]
async fn a_busy_key_costs_one_redis_round_trip_per_lease_not_per_request() {
    use rampart_actors::{BreakerSettings, Circuit, LimitClass, RateLimits, RedisLink};
    let redis = TestRedis::start();
    let circuit = Circuit::new("redis", BreakerSettings::default(), None);
    let link = RedisLink::new(&redis.url(), Duration::from_millis(500), circuit).expect("link");
    let limits = RateLimits::new(
        vec![LimitClass {
            name: "storefront".into(),
            limit: 1_000_000,
            period: Duration::from_secs(60),
        }],
        1000,
        Some(link),
    );
    for _ in 0..640 {
        assert!(limits.check(0, "198.51.100.1").await.allowed);
    }
    let mut conn = redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("info");
    let calls: u64 = info
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    // A lease is a hundredth of the limit, at most 64: 640 decisions are 10 round trips.
    assert!((10..=12).contains(&calls), "{calls} script calls\n{info}");
    assert_eq!(limits.snapshot().shared_decisions, 640);
}

/// One HTTP/1.1 connection driven by hand, to see what a client sees of its connection.
struct Connection {
    stream: tokio::net::TcpStream,
    read: Vec<u8>,
}

impl Connection {
    async fn open(app: &TestApp) -> Connection {
        let addr = app.base.trim_start_matches("http://").to_owned();
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        Connection {
            stream,
            read: Vec::new(),
        }
    }

    /// Sends one request and reads its answer: (status, the `Connection` header, if any).
    async fn send(&mut self, method: &str, path: &str, body: &str) -> (u16, Option<String>) {
        self.send_announcing(method, path, body.len(), body).await
    }

    /// Sends a request whose head announces `length` bytes of body, of which only `body` is
    /// sent, and reads its answer.
    async fn send_announcing(
        &mut self,
        method: &str,
        path: &str,
        length: usize,
        body: &str,
    ) -> (u16, Option<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
             Content-Length: {length}\r\n\r\n{body}"
        );
        self.stream
            .write_all(request.as_bytes())
            .await
            .expect("request written: the connection is open");
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(end) = self.read.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&self.read[..end]).to_lowercase();
                    let field = |name: &str| {
                        head.lines()
                            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
                    };
                    let length: usize = field("content-length").map_or(0, |v| v.parse().unwrap());
                    if self.read.len() >= end + 4 + length {
                        let status = head[9..12].parse().expect("status");
                        let connection = field("connection");
                        self.read.drain(..end + 4 + length);
                        return (status, connection);
                    }
                }
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).await.expect("read");
                assert!(n > 0, "the service closed the connection");
                self.read.extend_from_slice(&chunk[..n]);
            }
        });
        answer.await.expect("an answer within 10 s")
    }
}

#[actix_rt::test]
async fn a_refused_request_keeps_its_connection_for_the_next_one() {
    let app = TestApp::builder()
        .configure(|s| {
            s.rate_limit.enabled = true;
            s.rate_limit.classes.checkout = RateLimitClass {
                limit: 3,
                period_secs: 60,
            };
            s.memory.soft_limit_mb = 4096;
            s.memory.hard_limit_mb = 8192;
        })
        .spawn()
        .await;
    let m = app.create_merchant("Keep-alive").await;
    let product = app.create_product(&m, "K-1", 100, 5).await;
    let orders = format!("/api/v1/stores/{}/orders", m.id);
    let order = json!({"customer_email": "c@example.com",
                       "items": [{"product_id": product["id"], "quantity": 1}]})
    .to_string();
    let mut conn = Connection::open(&app).await;

    // Shed (503) twice on one connection, its body unread by any handler.
    app.actors
        .memory
        .call(Pressure(16 << 30))
        .await
        .expect("pressure");
    for _ in 0..2 {
        let (status, connection) = conn.send("POST", &orders, &order).await;
        assert_eq!(status, 503);
        assert_ne!(connection.as_deref(), Some("close"));
    }
    // A body that has not arrived is not waited for: refused at once, that connection closed.
    let mut slow = Connection::open(&app).await;
    let (status, connection) = slow.send_announcing("POST", &orders, order.len(), "").await;
    assert_eq!(status, 503);
    assert_eq!(connection.as_deref(), Some("close"));
    app.actors
        .memory
        .call(Pressure(0))
        .await
        .expect("pressure lifted");
    // The three shed checkouts spent the class's budget of 3: limited (429) on the first connection.
    let (status, connection) = conn.send("POST", &orders, &order).await;
    assert_eq!(status, 429);
    assert_ne!(connection.as_deref(), Some("close"));
    assert_eq!(conn.send("GET", "/health", "").await.0, 200);
    // Nothing refused was taken: the stock is whole.
    assert_eq!(app.get(&m.store_product(&product)).await.json()["stock"], 5);
}
