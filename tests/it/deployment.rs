//! The deployment's files against the service they deploy: every series the Grafana dashboard
//! draws is one the service exports. (The compose file and the Kubernetes manifests are
//! validated by their own tools in `make deploy-check`.)

use crate::support::{TestApp, TestRedis};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// The metric names a PromQL expression reads: identifiers with an underscore, less functions.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.contains('_') && !w.starts_with(|c: char| c.is_ascii_digit()))
        .filter(|w| !["histogram_quantile", "label_replace"].contains(w))
        .map(str::to_owned)
        .collect()
}

#[actix_rt::test]
async fn every_series_of_the_grafana_dashboard_is_exported_by_the_service() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docker/grafana/dashboards/rampart.json"
    );
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let datasource = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docker/grafana/provisioning/datasources/prometheus.yml"
    ))
    .expect("datasource");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut wanted = BTreeSet::new();
    let mut titles = Vec::new();
    for panel in panels {
        titles.push(panel["title"].as_str().expect("title").to_lowercase());
        let uid = panel["datasource"]["uid"]
            .as_str()
            .expect("a datasource uid");
        assert!(
            datasource.contains(&format!("uid: {uid}")),
            "panel datasource {uid} is provisioned"
        );
        for target in panel["targets"].as_array().expect("targets") {
            wanted.extend(metric_names(target["expr"].as_str().expect("expr")));
        }
    }
    // What the operators asked to see.
    for topic in [
        "request rate",
        "latency",
        "errors",
        "cache hit",
        "rate limit",
        "circuit",
        "mailbox",
        "job",
        "memory",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(topic)),
            "a panel on {topic}: {titles:?}"
        );
    }

    let redis = TestRedis::start();
    let app = TestApp::builder()
        .with_redis(&redis)
        .configure(|s| {
            s.rate_limit.enabled = true;
            s.jobs.enabled = true;
        })
        .spawn()
        .await;
    let m = app.create_merchant("Dashboards").await;
    app.create_product(&m, "D-1", 100, 1).await;
    assert_eq!(
        app.get(&format!("/api/v1/stores/{}/products", m.id))
            .await
            .status,
        200
    );
    // Some series start with the first sample of their actor: wait for them, within bounds.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = app.metrics().await;
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|name| {
                !text.lines().any(|l| {
                    l.strip_prefix(name.as_str())
                        .is_some_and(|rest| rest.starts_with(['{', ' ']))
                })
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard draws series the service does not export: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}
