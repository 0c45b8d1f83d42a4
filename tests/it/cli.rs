//! The `rampart` binary as operators run it: configuration errors, `serve` as `make run` starts
//! it, `migrate`, `merchant create`.

use crate::support::TestPg;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn rampart() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rampart"));
    cmd.env(
        "RAMPART_CONFIG_DIR",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
    )
    .env("RAMPART_ENV", "test")
    .env_remove("RUST_LOG");
    cmd
}

/// Runs `rampart merchant create ...`, which must succeed, and returns the JSON it prints.
fn merchant_create(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn an_invalid_value_stops_the_program_with_a_message_naming_the_key() {
    let out = rampart()
        .env("RAMPART__SERVER__PORT", "abc")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.port"), "{stderr}");

    let out = rampart()
        .env("RAMPART__DATABASE__MAX_CONNECTIONS", "0")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("database.max_connections"));
}

#[test]
fn an_unknown_key_stops_the_program_with_a_message_naming_it() {
    let out = rampart()
        .env("RAMPART__SERVER__PROT", "9000")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("prot"), "{stderr}");
}

#[actix_rt::test]
async fn migrate_and_merchant_create_work_against_a_configured_database() {
    let url = TestPg::shared().fresh_database().await;
    let out = rampart()
        .arg("migrate")
        .env("RAMPART__DATABASE__URL", &url)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let body = merchant_create(
        rampart()
            .args(["merchant", "create", "--name", "From the CLI"])
            .env("RAMPART__DATABASE__URL", &url),
    );
    assert_eq!(body["merchant"]["name"], "From the CLI");
    assert!(body["api_key"]
        .as_str()
        .is_some_and(|k| k.starts_with("rk_live_")));
}

/// `rampart serve` in the development environment (what `make run` starts), its stdout lines on
/// a channel.
struct Served {
    child: std::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    base: String,
}

fn serve_in(data: &Path, database_url: Option<&str>) -> Served {
    let port = rampart::pg_cluster::free_port().expect("port");
    let mut cmd = rampart();
    cmd.env("RAMPART_ENV", "development")
        .env("RAMPART__SERVER__PORT", port.to_string())
        .env("RAMPART__DATABASE__DATA_DIR", data)
        .env("RAMPART__LOG__FILTER", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(url) = database_url {
        cmd.env("RAMPART__DATABASE__URL", url);
    }
    let mut child = cmd.spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    Served {
        child,
        lines,
        base: format!("http://127.0.0.1:{port}"),
    }
}

impl Served {
    /// The demo key from the banner.
    async fn demo_key(&mut self) -> String {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(120), self.lines.recv())
                .await
                .expect("the banner within two minutes")
                .expect("the program is running");
            if let Some(key) = line.split("demo merchant API key: ").nth(1) {
                return key.to_owned();
            }
        }
    }

    async fn status(&self, path: &str, key: Option<&str>) -> u16 {
        let mut req = awc::Client::default().get(format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        req.send().await.expect("request").status().as_u16()
    }

    async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success());
        tokio::task::spawn_blocking(move || self.child.wait())
            .await
            .expect("join")
            .expect("wait")
    }
}

#[actix_rt::test]
async fn merchant_create_beside_a_running_server_uses_its_cluster_and_leaves_it_serving() {
    let data = std::env::temp_dir().join(format!("rampart-run-{}", uuid::Uuid::new_v4().simple()));
    let mut served = serve_in(&data, None);
    let demo = served.demo_key().await;
    assert_eq!(served.status("/health/ready", None).await, 200);

    let created = merchant_create(
        rampart()
            .args(["merchant", "create", "--name", "Beside make run"])
            .env("RAMPART_ENV", "development")
            .env("RAMPART__DATABASE__DATA_DIR", &data)
            .env("RAMPART__LOG__FILTER", "warn"),
    );
    let key = created["api_key"].as_str().expect("key");

    assert_eq!(
        served.status("/health/ready", None).await,
        200,
        "still ready"
    );
    assert_eq!(
        served.status("/api/v1/products", Some(key)).await,
        200,
        "the new merchant exists in the server's database"
    );
    assert_eq!(served.status("/api/v1/products", Some(&demo)).await, 200);
    assert!(served.terminate().await.success());
    assert!(
        !data.join("postgres/postmaster.pid").exists(),
        "the server that started the cluster stopped it"
    );
    let _ = std::fs::remove_dir_all(&data);
}

#[actix_rt::test]
async fn the_kept_demo_key_survives_runs_on_other_databases_and_works_on_the_next_make_run() {
    let data = std::env::temp_dir().join(format!("rampart-run-{}", uuid::Uuid::new_v4().simple()));
    let mut first = serve_in(&data, None);
    let kept = first.demo_key().await;
    assert_eq!(first.status("/api/v1/products", Some(&kept)).await, 200);
    assert!(first.terminate().await.success());

    // A run with database.url set in the same folder (a test, a benchmark).
    let elsewhere = TestPg::shared().fresh_database().await;
    let mut other = serve_in(&data, Some(&elsewhere));
    let other_key = other.demo_key().await;
    assert_ne!(other_key, kept);
    assert_eq!(
        other.status("/api/v1/products", Some(&other_key)).await,
        200
    );
    assert!(other.terminate().await.success());
    assert_eq!(
        std::fs::read_to_string(data.join("demo-api-key"))
            .expect("kept")
            .trim(),
        kept,
        "the kept key belongs to the embedded cluster"
    );
    let mode = std::fs::metadata(data.join("demo-api-key"))
        .expect("kept key")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600,
        "a credential only its owner reads"
    );

    let mut again = serve_in(&data, None);
    let printed = again.demo_key().await;
    assert_eq!(printed, kept);
    assert_eq!(again.status("/api/v1/products", Some(&printed)).await, 200);
    assert!(again.terminate().await.success());
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn the_embedded_cluster_admits_no_one_without_its_generated_password() {
    let data = std::env::temp_dir().join(format!("rampart-pw-{}", uuid::Uuid::new_v4().simple()));
    let cluster = rampart::pg_cluster::Cluster::start(
        &data,
        None,
        rampart::pg_cluster::Durability::Ephemeral,
    )
    .expect("start");
    cluster.stop_when_process_exits();
    let secret = cluster.password_file();
    let mode = std::fs::metadata(&secret)
        .expect("password file")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let anonymous = format!(
            "postgres://{}@127.0.0.1:{}/postgres",
            rampart::pg_cluster::SUPERUSER,
            cluster.port()
        );
        let refused = tokio_postgres::connect(&anonymous, tokio_postgres::NoTls).await;
        assert!(refused.is_err(), "no password, no session");
        let wrong = anonymous.replace('@', ":wrong@");
        assert!(tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
            .await
            .is_err());
        assert!(
            tokio_postgres::connect(&cluster.url("postgres"), tokio_postgres::NoTls)
                .await
                .is_ok(),
            "the kept password works"
        );
    });
    cluster.stop_with("immediate").expect("stop");
}

#[test]
fn production_requires_a_shared_cursor_secret_and_narrow_integers_are_bounded() {
    let out = rampart()
        .env("RAMPART_ENV", "production")
        .env("RAMPART__ADMIN__TOKEN", "a-production-admin-token")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.cursor_secret"));

    for (key, value, name) in [
        (
            "RAMPART__JOBS__MAX_ATTEMPTS",
            "3000000000",
            "jobs.max_attempts",
        ),
        (
            "RAMPART__DATABASE__STATEMENT_TIMEOUT_MS",
            "3000000000",
            "database.statement_timeout_ms",
        ),
        (
            "RAMPART__SERVER__REQUEST_TIMEOUT_MS",
            "0",
            "server.request_timeout_ms",
        ),
        (
            "RAMPART__SERVER__CURSOR_SECRET",
            "short",
            "server.cursor_secret",
        ),
    ] {
        let out = rampart().env(key, value).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{key}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(name), "{stderr}");
    }
}

#[test]
fn the_compose_file_ships_no_default_secrets() {
    let compose =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/compose.yml"))
            .expect("compose.yml");
    for secret in ["ADMIN__TOKEN", "CURSOR_SECRET", "POSTGRES_PASSWORD:"] {
        let line = compose
            .lines()
            .find(|l| l.contains(secret) && !l.trim_start().starts_with('#'))
            .unwrap_or_else(|| panic!("{secret} is configured"));
        assert!(line.contains(":?"), "required, no default: {line}");
        assert!(!line.contains(":-"), "no default: {line}");
    }
}

/// What `make run` does: the development environment, a local cluster under the data
/// directory, a demo merchant; then SIGTERM stops it all.
#[actix_rt::test]
async fn serve_in_development_starts_its_own_postgres_prints_a_demo_key_and_stops_cleanly_on_sigterm(
) {
    let data = std::env::temp_dir().join(format!("rampart-run-{}", uuid::Uuid::new_v4().simple()));
    let port = rampart::pg_cluster::free_port().expect("port");
    let mut child = rampart()
        .env("RAMPART_ENV", "development")
        .env("RAMPART__SERVER__PORT", port.to_string())
        .env("RAMPART__DATABASE__DATA_DIR", &data)
        .env("RAMPART__LOG__FILTER", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut key = None;
    while key.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.recv())
            .await
            .expect("the banner within two minutes")
            .expect("the program is running");
        key = line
            .split("demo merchant API key: ")
            .nth(1)
            .map(str::to_owned);
    }
    let key = key.expect("key");
    assert!(key.starts_with("rk_live_"), "{key}");

    let client = awc::Client::default();
    let base = format!("http://127.0.0.1:{port}");
    let mut health = client
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.body().await.expect("body").as_ref(),
        br#"{"status":"ok"}"#
    );
    let ready = client
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 200);

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(
        !data.join("postgres/postmaster.pid").exists(),
        "the local PostgreSQL was stopped"
    );
    let _ = std::fs::remove_dir_all(&data);
}
