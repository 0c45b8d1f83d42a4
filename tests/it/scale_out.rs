//! Three instances (three `rampart serve` processes) behind a real nginx running the
//! repository's own `docker/nginx.conf`, on one PostgreSQL and one Redis: a write through any
//! instance is visible through all within a second, the rate limits hold in total, every job
//! runs once, and killing an instance under load costs storefront readers nothing and
//! checkout clients no duplicate order.

use crate::receivers::{Behaviour, WebhookReceiver};
use crate::support::{jobs_started, wait_until, OtherProcess, TestApp, TestRedis};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// nginx on a free loopback port, in front of `upstreams`, with `docker/nginx.conf` as the
/// deployment ships it (only the addresses changed).
pub struct TestNginx {
    child: std::process::Child,
    pub base: String,
}

impl TestNginx {
    pub fn start(upstreams: &[&str]) -> TestNginx {
        let dir =
            std::env::temp_dir().join(format!("rampart-nginx-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let port = rampart::pg_cluster::free_port().expect("port");
        let shipped =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/nginx.conf"))
                .expect("docker/nginx.conf");
        let servers: String = upstreams
            .iter()
            .map(|u| format!("server {u} max_fails=3 fail_timeout=10s;\n    "))
            .collect();
        let site = shipped
            .replace(
                "server rampart:8080 max_fails=3 fail_timeout=10s;",
                servers.trim_end(),
            )
            .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"));
        assert_ne!(
            site, shipped,
            "the shipped configuration has the lines the test replaces"
        );
        std::fs::write(dir.join("rampart.conf"), site).expect("site");
        let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        });
        let d = dir.display();
        let main = format!(
            "daemon off;\n{user}worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             include {d}/rampart.conf;\n}}\n",
            user = if root { "user root;\n" } else { "" },
        );
        std::fs::write(dir.join("nginx.conf"), main).expect("nginx.conf");
        let binary = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|b| std::path::Path::new(b).is_file())
            .unwrap_or("nginx");
        let child = std::process::Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("nginx (make test installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        TestNginx {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for TestNginx {
    fn drop(&mut self) {
        // TERM: the master takes its workers with it.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A client address of its own for each request (believed from the trusted proxy).
fn someone(n: u64) -> String {
    format!("198.51.{}.{}", (n / 250) % 250, n % 250 + 1)
}

async fn status_of(req: awc::ClientRequest, body: Option<&Value>) -> (u16, Value) {
    let sent = match body {
        Some(b) => req.send_json(b).await,
        None => req.send().await,
    };
    match sent {
        Ok(mut reply) => {
            let bytes = reply.body().limit(1 << 20).await.unwrap_or_default();
            (
                reply.status().as_u16(),
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        }
        Err(_) => (0, Value::Null),
    }
}

#[actix_rt::test]
async fn three_instances_behind_nginx_act_as_one_service() {
    let redis = TestRedis::start();
    let receiver = WebhookReceiver::start(Behaviour::Accept);
    let app = TestApp::builder()
        .with_redis(&redis)
        .configure(|s| s.webhooks.allow_private_targets = true)
        .spawn()
        .await;
    let outbox =
        std::env::temp_dir().join(format!("rampart-outbox-{}", uuid::Uuid::new_v4().simple()));
    let outbox = outbox.display().to_string();
    let env = [
        ("RAMPART__SERVER__TRUSTED_PROXIES", "127.0.0.1"),
        ("RAMPART__RATE_LIMIT__CLASSES__STOREFRONT__LIMIT", "100"),
        // The subject is the limit held in Redis: a loaded test machine can take longer than the
        // default 100 ms to answer, and each instance would then decide alone (a fallback).
        ("RAMPART__REDIS__COMMAND_TIMEOUT_MS", "2000"),
        (
            "RAMPART__RATE_LIMIT__CLASSES__STOREFRONT__PERIOD_SECS",
            "60",
        ),
        ("RAMPART__WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true"),
        ("RAMPART__EMAIL__OUTBOX_DIR", outbox.as_str()),
        ("RAMPART__JOBS__ENABLED", "true"),
    ];
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(OtherProcess::start(&app, &redis, &env).await);
    }
    let addresses: Vec<String> = instances
        .iter()
        .map(|i| i.base.trim_start_matches("http://").to_owned())
        .collect();
    let nginx = TestNginx::start(&addresses.iter().map(String::as_str).collect::<Vec<_>>());
    let client = app.client.clone();
    let via = |path: &str| format!("{}{path}", nginx.base);

    let (shop, _) = app
        .create_merchant_with(&json!({"name": "Scaled", "webhook_url": receiver.url}))
        .await;
    let product = app.create_product(&shop, "SCALE-1", 1000, 100_000).await;
    let product_id = product["id"].as_str().expect("id").to_owned();
    let item = format!("/api/v1/stores/{}/products/{product_id}", shop.id);
    let mut n = 0u64;
    let mut next = || {
        n += 1;
        someone(n)
    };

    // A write through nginx (whichever instance takes it) is visible through every instance
    // within a second, though each had the old value cached.
    for instance in &instances {
        let req = client
            .get(format!("{}{item}", instance.base))
            .insert_header(("X-Forwarded-For", next()));
        assert_eq!(status_of(req, None).await.0, 200);
    }
    let (status, _) = status_of(
        client
            .post(via(&format!("/api/v1/stores/{}/orders", shop.id)))
            .insert_header(("X-Forwarded-For", next())),
        Some(&json!({"customer_email": "first@example.com", "items": [{"product_id": product_id, "quantity": 7}]})),
    )
    .await;
    assert_eq!(status, 201);
    let expected = product["stock"].as_i64().expect("stock") - 7;
    let mut polls = 0u64;
    wait_until(
        "every instance shows the write",
        Duration::from_secs(1),
        async || {
            let mut all = true;
            for instance in &instances {
                polls += 1;
                let req = client
                    .get(format!("{}{item}", instance.base))
                    .insert_header(("X-Forwarded-For", someone(500_000 + polls)));
                all &= status_of(req, None).await.1["stock"] == expected;
            }
            all
        },
    )
    .await;

    // One client, 300 requests spread over three instances: the limit of 100 per minute holds
    // in total (each instance may run ahead by one lease of a hundredth of the limit).
    let mut admitted = 0;
    let started = std::time::Instant::now();
    for _ in 0..30 {
        let batch = (0..10).map(|_| {
            status_of(
                client
                    .get(via(&format!("/api/v1/stores/{}/products", shop.id)))
                    .insert_header(("X-Forwarded-For", "203.0.113.9")),
                None,
            )
        });
        for (status, _) in futures_util::future::join_all(batch).await {
            assert!(status == 200 || status == 429, "status {status}");
            admitted += usize::from(status == 200);
        }
    }
    // The bucket refills at 100 a minute while the requests run: a slow machine earns that much.
    let refilled = (started.elapsed().as_secs_f64() * 100.0 / 60.0).ceil() as usize;
    assert!(
        (95..=103 + refilled).contains(&admitted),
        "admitted {admitted} of 300 with a limit of 100 ({refilled} refilled meanwhile)"
    );

    // Every job of 20 more checkouts runs once, whichever instance claims it.
    for k in 0..20 {
        let (status, _) = status_of(
            client
                .post(via(&format!("/api/v1/stores/{}/orders", shop.id)))
                .insert_header(("X-Forwarded-For", next())),
            Some(&json!({"customer_email": format!("once{k}@example.com"), "items": [{"product_id": product_id, "quantity": 1}]})),
        )
        .await;
        assert_eq!(status, 201);
    }
    let sql = app.sql().await;
    wait_until("every job has run", Duration::from_secs(30), async || {
        let row = sql
            .query_one(
                "SELECT count(*) FILTER (WHERE status <> 'succeeded') FROM jobs",
                &[],
            )
            .await
            .expect("count");
        row.get::<_, i64>(0) == 0 && receiver.received().len() >= 21
    })
    .await;
    let twice: i64 = sql
        .query_one("SELECT count(*) FROM jobs WHERE attempts <> 1", &[])
        .await
        .expect("attempts")
        .get(0);
    assert_eq!(twice, 0, "jobs claimed more than once");
    // Analytics jobs leave the queue with their work: their runs are counted by the instances.
    let mut analytics_runs = 0;
    for instance in &instances {
        analytics_runs += jobs_started(&instance.text("/metrics").await, Some("analytics"));
    }
    let orders: i64 = sql
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("orders")
        .get(0);
    assert_eq!(analytics_runs, orders as u64, "one analytics run per order");
    let events: Vec<Value> = receiver.received().iter().map(|d| d.json()).collect();
    let ids: HashSet<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(
        (events.len(), ids.len()),
        (21, 21),
        "each order.created delivered once"
    );

    // Killing an instance under load: storefront reads never see a 5xx (nginx passes them on),
    // and checkouts retried with their Idempotency-Key create each order once.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let bad_reads = Arc::new(AtomicU64::new(0));
    let checkouts = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for reader in 0..6u64 {
        let (stop, reads, bad, client, url) = (
            stop.clone(),
            reads.clone(),
            bad_reads.clone(),
            client.clone(),
            via(&item),
        );
        load.push(actix_rt::spawn(async move {
            let mut k = 0;
            while !stop.load(Relaxed) {
                k += 1;
                let who = someone(10_000 + reader * 100_000 + k);
                let (status, _) = status_of(
                    client.get(&url).insert_header(("X-Forwarded-For", who)),
                    None,
                )
                .await;
                reads.fetch_add(1, Relaxed);
                if status != 200 {
                    bad.fetch_add(1, Relaxed);
                    eprintln!("storefront read during the kill: {status}");
                }
            }
            Vec::new()
        }));
    }
    for buyer in 0..2u64 {
        let (stop, done, client, url, product_id) = (
            stop.clone(),
            checkouts.clone(),
            client.clone(),
            via(&format!("/api/v1/stores/{}/orders", shop.id)),
            product_id.clone(),
        );
        load.push(actix_rt::spawn(async move {
            let mut keys = Vec::new();
            let mut k = 0;
            while !stop.load(Relaxed) {
                k += 1;
                let key = format!("kill-{buyer}-{k}");
                let body = json!({"customer_email": format!("{key}@example.com"), "items": [{"product_id": product_id, "quantity": 1}]});
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    assert!(attempts <= 100, "checkout {key} never succeeded");
                    let who = someone(900_000 + buyer * 10_000 + k * 10 + attempts % 10);
                    let req = client
                        .post(&url)
                        .insert_header(("Idempotency-Key", key.as_str()))
                        .insert_header(("X-Forwarded-For", who));
                    if status_of(req, Some(&body)).await.0 == 201 {
                        break;
                    }
                }
                keys.push(key);
                done.fetch_add(1, Relaxed);
            }
            keys
        }));
    }
    wait_until("load runs", Duration::from_secs(30), async || {
        reads.load(Relaxed) >= 200 && checkouts.load(Relaxed) >= 5
    })
    .await;
    instances[1].kill();
    let (reads_at_kill, checkouts_at_kill) = (reads.load(Relaxed), checkouts.load(Relaxed));
    wait_until(
        "load goes on past the kill",
        Duration::from_secs(60),
        async || {
            reads.load(Relaxed) >= reads_at_kill + 600
                && checkouts.load(Relaxed) >= checkouts_at_kill + 20
        },
    )
    .await;
    stop.store(true, Relaxed);
    let mut keys = Vec::new();
    for task in load {
        keys.extend(task.await.expect("load task"));
    }
    assert_eq!(
        bad_reads.load(Relaxed),
        0,
        "storefront reads that failed while an instance died"
    );
    let emails: Vec<String> = keys.iter().map(|k| format!("{k}@example.com")).collect();
    let per_key: Vec<i64> = sql
        .query(
            "SELECT count(o.id) FROM unnest($1::text[]) AS e(email) LEFT JOIN orders o ON o.customer_email = e.email GROUP BY e.email",
            &[&emails],
        )
        .await
        .expect("orders per key")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(per_key.len(), keys.len());
    assert!(
        per_key.iter().all(|n| *n == 1),
        "orders per Idempotency-Key: {per_key:?}"
    );
    drop(nginx);
    drop(instances);
    receiver.stop().await;
    app.stop().await;
}
