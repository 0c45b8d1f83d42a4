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

    let out = rampart()
        .args(["merchant", "create", "--name", "From the CLI"])
        .env("RAMPART__DATABASE__URL", &url)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(body["merchant"]["name"], "From the CLI");
    assert!(body["api_key"]
        .as_str()
        .is_some_and(|k| k.starts_with("rk_live_")));
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
