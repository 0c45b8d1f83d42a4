//! The test harness: real PostgreSQL (one temporary cluster per test process, a fresh database
//! per test cloned from a migrated template), the real service on port 0, typed helpers.

use awc::http::StatusCode;
use rampart::pg_cluster::{Cluster, Durability};
use rampart::settings::{Secret, Settings};
use rampart::startup::Application;
use rampart_actors::{Db, Handle};
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::Duration;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
const TEMPLATE: &str = "rampart_template";

/// A temporary cluster, removed when the test process ends.
pub struct TestPg {
    pub cluster: Cluster,
}

impl TestPg {
    /// A cluster of its own, for tests that stop and start the server.
    pub fn dedicated() -> TestPg {
        Self::with(Durability::Ephemeral)
    }

    /// A cluster of its own that keeps every acknowledged commit through a crash (`fsync`,
    /// `synchronous_commit`), for tests that stop it with `-m immediate` and count what survived.
    pub fn durable() -> TestPg {
        Self::with(Durability::Durable)
    }

    fn with(durability: Durability) -> TestPg {
        let dir = scratch_dir().join(format!(
            "rampart-it-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let cluster = Cluster::start(&dir, None, durability).expect("start a temporary PostgreSQL");
        cluster.stop_when_process_exits();
        let pg = TestPg { cluster };
        pg.make_template();
        pg
    }

    /// The cluster shared by the tests of this process.
    pub fn shared() -> &'static TestPg {
        static SHARED: OnceLock<TestPg> = OnceLock::new();
        SHARED.get_or_init(TestPg::dedicated)
    }

    fn make_template(&self) {
        let url = self.cluster.url("postgres");
        let template_url = self.cluster.url(TEMPLATE);
        // Our caller may already be inside a runtime: do the async setup on a thread of its own.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let admin = connect(&url).await;
                admin
                    .batch_execute(&format!("CREATE DATABASE {TEMPLATE}"))
                    .await
                    .expect("create template");
                let mut client = connect(&template_url).await;
                rampart::store::migrate::apply(&mut client)
                    .await
                    .expect("migrate template");
            })
        })
        .join()
        .expect("template setup");
    }

    /// A new database holding the migrated schema and nothing else.
    pub async fn fresh_database(&self) -> String {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = connect(&self.cluster.url("postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
            .await
            .expect("clone the template");
        self.cluster.url(&name)
    }
}

/// Where test clusters keep their data: in memory (`/dev/shm`) when it has room, else the
/// temporary directory. The suite clones a database per test (150 and more, 8 MB each) and
/// starts a dozen clusters: on a machine short of disk, PostgreSQL once stopped being able to
/// write and the suite's last tests all failed.
fn scratch_dir() -> std::path::PathBuf {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        const ROOM: u64 = 4 << 30;
        let shm = std::path::PathBuf::from("/dev/shm");
        let free = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&shm)
            .output()
            .ok()
            .and_then(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .nth(1)
                    .and_then(|l| l.trim().parse::<u64>().ok())
            });
        if free.is_some_and(|free| free >= ROOM) {
            shm
        } else {
            std::env::temp_dir()
        }
    })
    .clone()
}

/// `SELECT 1` through `Db`: the smallest command, to see that its lane serves.
pub struct Select1;

impl rampart_actors::DbCommand for Select1 {
    type Output = ();
    async fn run(self, conn: &mut rampart_actors::Conn) -> Result<(), rampart_actors::DbError> {
        conn.simple_query("SELECT 1").await?;
        Ok(())
    }
}

/// Job runs started on an instance, from its metrics (`jobs_started_total`): in `queue`, or in
/// all queues.
pub fn jobs_started(metrics: &str, queue: Option<&str>) -> u64 {
    let labels = queue.map(|q| format!("{{queue=\"{q}\"}}"));
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("jobs_started_total"))
        .filter(|l| labels.as_ref().is_none_or(|q| l.starts_with(q.as_str())))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Waits until `condition` holds, checking every 10 ms, and fails the test after `within`.
pub async fn wait_until(what: &str, within: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

pub struct TestAppBuilder {
    settings: Settings,
    pg: &'static TestPg,
    database: Option<String>,
}

impl TestAppBuilder {
    pub fn configure(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        f(&mut self.settings);
        self
    }

    pub fn on(mut self, pg: &'static TestPg) -> Self {
        self.pg = pg;
        self
    }

    /// Another instance of a deployment: the same database as `other`.
    pub fn beside(mut self, other: &TestApp) -> Self {
        self.database = Some(other.database_url.clone());
        self
    }

    /// On this database (already migrated) instead of a fresh one.
    pub fn database(mut self, url: &str) -> Self {
        self.database = Some(url.to_owned());
        self
    }

    /// With the Redis tier on `redis`.
    pub fn with_redis(self, redis: &TestRedis) -> Self {
        let url = redis.url();
        self.configure(|s| s.redis.url = Some(Secret::new(url)))
    }

    pub async fn spawn(mut self) -> TestApp {
        let url = match self.database.take() {
            Some(url) => url,
            None => self.pg.fresh_database().await,
        };
        self.settings.database.url = Some(Secret::new(url.clone()));
        let app = Application::build(self.settings.clone())
            .await
            .expect("build the application");
        let port = app.port();
        let management = app
            .management_port()
            .map(|port| format!("http://127.0.0.1:{port}"));
        let db = app.db().clone();
        let gauge = app.gauge().clone();
        let cache = app.cache().clone();
        let actors = app.handles().clone();
        let handle = app.handle();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        actix_rt::spawn(async move {
            let _ = app.run_until_stopped().await;
            let _ = done_tx.send(());
        });
        TestApp {
            base: format!("http://127.0.0.1:{port}"),
            management,
            database_url: url,
            db,
            gauge,
            cache,
            actors,
            handle,
            stopped: Some(done_rx),
            client: awc::Client::builder()
                .timeout(Duration::from_secs(30))
                .connector(awc::Connector::new().limit(1000))
                .finish(),
        }
    }
}

pub struct TestApp {
    pub base: String,
    /// The management port's base URL (with `server.management_port` set).
    pub management: Option<String>,
    pub database_url: String,
    pub db: Handle<Db>,
    pub gauge: rampart_actors::DbGauge,
    pub cache: rampart::storefront_cache::StoreCache,
    /// Every actor of the supervision tree.
    pub actors: rampart::startup::Handles,
    pub handle: actix_web::dev::ServerHandle,
    stopped: Option<tokio::sync::oneshot::Receiver<()>>,
    pub client: awc::Client,
}

/// A response read whole: status, headers and body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: awc::http::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// Asserts the status, showing the body when it is another.
    pub fn assert_status(&self, status: u16) {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Asserts a problem+json response with this status, and returns its body.
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "status {status}"
        );
        let body = self.json();
        assert_eq!(body["status"], status);
        assert!(
            body["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("/problems/")),
            "{body}"
        );
        assert!(
            body["title"].is_string() && body["detail"].is_string(),
            "{body}"
        );
        assert!(body["request_id"].is_string(), "{body}");
        body
    }
}

pub struct Merchant {
    pub id: String,
    pub api_key: String,
}

impl Merchant {
    /// The storefront path of one of this merchant's products (its JSON).
    pub fn store_product(&self, product: &Value) -> String {
        let id = product["id"].as_str().expect("id");
        format!("/api/v1/stores/{}/products/{id}", self.id)
    }
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        let mut settings = Settings::for_tests().expect("test settings");
        settings.server.port = 0;
        settings.server.workers = 2;
        settings.server.shutdown_timeout_secs = 2;
        settings.admin.token = Some(Secret::new(ADMIN_TOKEN));
        settings.dev.demo_merchant = false;
        // Limits are the guardians tests' subject; elsewhere they would only add 429s.
        settings.rate_limit.enabled = false;
        // The jobs tests dispatch; elsewhere the dispatcher's polling would only add commands
        // to the `Db` counts tests read.
        settings.jobs.enabled = false;
        TestAppBuilder {
            settings,
            pg: TestPg::shared(),
            database: None,
        }
    }

    pub async fn spawn() -> TestApp {
        Self::builder().spawn().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn send(&self, req: awc::ClientRequest, body: Option<&[u8]>) -> Reply {
        let result = match body {
            Some(b) => req.send_body(b.to_vec()).await,
            None => req.send().await,
        };
        let mut res = result.expect("request sent");
        let body = res.body().limit(64 * 1024 * 1024).await.expect("body read");
        Reply {
            status: res.status(),
            headers: res.headers().clone(),
            body: body.to_vec(),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path)), None).await
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> String {
        String::from_utf8(self.get("/metrics").await.body).expect("utf8")
    }

    pub async fn get_as(&self, key: &str, path: &str) -> Reply {
        self.send(self.client.get(self.url(path)).bearer_auth(key), None)
            .await
    }

    /// Archives a product (`DELETE /api/v1/products/{id}`) as its merchant.
    pub async fn archive_product(&self, merchant: &Merchant, id: &str) -> Reply {
        let url = self.url(&format!("/api/v1/products/{id}"));
        let req = self.client.delete(url).bearer_auth(&merchant.api_key);
        self.send(req, None).await
    }

    pub async fn post_json(&self, path: &str, key: Option<&str>, body: &Value) -> Reply {
        self.json_request(awc::http::Method::POST, path, key, body)
            .await
    }

    pub async fn json_request(
        &self,
        method: awc::http::Method,
        path: &str,
        key: Option<&str>,
        body: &Value,
    ) -> Reply {
        let mut req = self
            .client
            .request(method, self.url(path))
            .content_type("application/json");
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        self.send(req, Some(body.to_string().as_bytes())).await
    }

    pub async fn create_merchant(&self, name: &str) -> Merchant {
        self.create_merchant_with(&json!({"name": name})).await.0
    }

    /// `POST /api/v1/admin/merchants` with `body`: the merchant and the whole answer (its
    /// webhook secret among the rest).
    pub async fn create_merchant_with(&self, body: &Value) -> (Merchant, Value) {
        let reply = self
            .post_json("/api/v1/admin/merchants", Some(ADMIN_TOKEN), body)
            .await;
        reply.assert_status(201);
        let body = reply.json();
        let merchant = Merchant {
            id: body["merchant"]["id"].as_str().expect("id").to_owned(),
            api_key: body["api_key"].as_str().expect("key").to_owned(),
        };
        (merchant, body)
    }

    pub async fn sql(&self) -> tokio_postgres::Client {
        connect(&self.database_url).await
    }

    /// Stops the server gracefully and waits until its actors have stopped.
    pub async fn stop(mut self) {
        self.handle.stop(true).await;
        if let Some(done) = self.stopped.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), done).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if self.stopped.is_some() {
            let handle = self.handle.clone();
            actix_rt::spawn(async move { handle.stop(false).await });
        }
    }
}

impl TestApp {
    /// Creates a product for `merchant` and returns its JSON.
    pub async fn create_product(
        &self,
        merchant: &Merchant,
        sku: &str,
        price_cents: i64,
        stock: i64,
    ) -> Value {
        let body = json!({"sku": sku, "name": format!("Product {sku}"), "price_cents": price_cents, "currency": "EUR", "stock": stock, "category": "general"});
        let reply = self
            .post_json("/api/v1/products", Some(&merchant.api_key), &body)
            .await;
        reply.assert_status(201);
        reply.json()
    }

    pub async fn checkout(&self, store: &str, body: &Value, key: Option<&str>) -> Reply {
        let mut req = self
            .client
            .post(self.url(&format!("/api/v1/stores/{store}/orders")))
            .content_type("application/json");
        if let Some(key) = key {
            req = req.insert_header(("Idempotency-Key", key));
        }
        self.send(req, Some(body.to_string().as_bytes())).await
    }
}

/// A temporary Redis on a free loopback port, killed when the test process ends. Tests stop,
/// restart and freeze (SIGSTOP) it.
pub struct TestRedis {
    pub port: u16,
    pid: std::sync::Mutex<Option<u32>>,
}

impl TestRedis {
    pub fn start() -> TestRedis {
        let redis = TestRedis {
            port: rampart::pg_cluster::free_port().expect("port"),
            pid: std::sync::Mutex::new(None),
        };
        redis.start_again();
        redis
    }

    /// Runs one command on this Redis directly (not through any instance).
    pub async fn run(&self, args: &[&str]) -> redis::Value {
        let mut conn = redis::Client::open(self.url())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connection");
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query_async(&mut conn).await.expect("command")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn start_again(&self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (make test installs it)");
        let pid = child.id();
        // Killed with the test process, however that ends.
        let _ = std::process::Command::new("setsid")
            .args([
                "sh",
                "-c",
                &format!(
                    "while kill -0 {} 2>/dev/null && kill -0 {pid} 2>/dev/null; do sleep 0.5; done; kill -CONT {pid} 2>/dev/null; kill -9 {pid} 2>/dev/null",
                    std::process::id()
                ),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        *self.pid.lock().expect("pid") = Some(pid);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = *self.pid.lock().expect("pid") {
            let _ = std::process::Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    }

    /// Kills the server and waits until its port refuses connections.
    pub fn stop(&self) {
        self.signal("-CONT");
        self.signal("-9");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }
}

/// `rampart serve` in a process of its own: another instance of `app`'s deployment (the same
/// PostgreSQL database and Redis), with `env` on top of the test configuration; killed when
/// dropped.
pub struct OtherProcess {
    child: std::process::Child,
    pub base: String,
    pub client: awc::Client,
}

impl OtherProcess {
    pub async fn start(app: &TestApp, redis: &TestRedis, env: &[(&str, &str)]) -> OtherProcess {
        let mut with_redis = vec![("RAMPART__REDIS__URL", redis.url())];
        with_redis.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        Self::spawn(app, &with_redis, std::process::Stdio::null()).await
    }

    /// Without Redis, its log (stderr) written to `log`.
    pub async fn logging_to(
        app: &TestApp,
        env: &[(&str, &str)],
        log: &std::path::Path,
    ) -> OtherProcess {
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        let file = std::fs::File::create(log).expect("log file");
        Self::spawn(app, &env, file.into()).await
    }

    async fn spawn(
        app: &TestApp,
        env: &[(&str, String)],
        log: std::process::Stdio,
    ) -> OtherProcess {
        let port = rampart::pg_cluster::free_port().expect("port");
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_rampart"));
        command
            .env(
                "RAMPART_CONFIG_DIR",
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
            )
            .env("RAMPART_ENV", "test")
            .env("RAMPART__SERVER__PORT", port.to_string())
            .env("RAMPART__SERVER__WORKERS", "2")
            .env("RAMPART__DATABASE__URL", &app.database_url)
            .env("RAMPART__LOG__FILTER", "error")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(log);
        let child = command.spawn().expect("spawn rampart");
        let other = OtherProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: awc::Client::default(),
        };
        wait_until(
            "the other process is ready",
            Duration::from_secs(60),
            async || other.status("/health/ready").await == Some(200),
        )
        .await;
        other
    }

    /// SIGKILL: the instance dies mid-request, as a crashed machine would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: the instance stops gracefully, as an orchestrator stops it; returns once it has
    /// exited.
    pub async fn terminate(&mut self) {
        self.signal("-TERM");
        let child = &mut self.child;
        wait_until(
            "the instance has exited after SIGTERM",
            Duration::from_secs(30),
            async || matches!(child.try_wait(), Ok(Some(_))),
        )
        .await;
    }

    /// SIGSTOP: the instance stops dead, its connections open, as a stalled machine would.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let _ = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
    }

    pub async fn status(&self, path: &str) -> Option<u16> {
        let reply = self.client.get(format!("{}{path}", self.base)).send().await;
        reply.ok().map(|r| r.status().as_u16())
    }

    /// The body of `GET path`.
    async fn body(&self, path: &str) -> actix_web::web::Bytes {
        let mut reply = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        reply.body().await.expect("body")
    }

    pub async fn text(&self, path: &str) -> String {
        String::from_utf8(self.body(path).await.to_vec()).expect("utf8")
    }

    pub async fn json(&self, path: &str) -> serde_json::Value {
        serde_json::from_slice(&self.body(path).await).expect("json")
    }
}

impl Drop for OtherProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A merchant named `name` whose webhooks go to `url`, set in the database: the in-process
/// instance refuses loopback URLs (`webhooks.allow_private_targets` is off there), the other
/// processes the tests start allow them.
pub async fn merchant_with_webhook_allowed(app: &TestApp, name: &str, url: &str) -> Merchant {
    let merchant = app.create_merchant(name).await;
    app.sql()
        .await
        .execute(
            "UPDATE merchants SET webhook_url = $1 WHERE id = $2::text::uuid",
            &[&url, &merchant.id],
        )
        .await
        .unwrap();
    merchant
}

/// Moves an order to `to` through the merchant API, expecting 200.
pub async fn set_status(app: &TestApp, merchant: &Merchant, order: &Value, to: &str) {
    let path = format!("/api/v1/orders/{}/status", order["id"].as_str().unwrap());
    let reply = app
        .post_json(&path, Some(&merchant.api_key), &json!({"status": to}))
        .await;
    reply.assert_status(200);
}

/// Waits until every job is finished (succeeded or dead).
pub async fn all_jobs_finished(app: &TestApp) {
    let sql = app.sql().await;
    wait_until("every job finished", Duration::from_secs(30), async || {
        let open: i64 = sql
            .query_one(
                "SELECT count(*) FROM jobs WHERE status NOT IN ('succeeded', 'dead')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        open == 0
    })
    .await;
}
