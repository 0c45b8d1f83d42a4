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

fn shipped(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).expect(path)
}

/// The value of `key: value` (YAML, quotes dropped) on the first line that has it.
fn yaml_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.trim().trim_start_matches("- ").strip_prefix(key)?;
        Some(rest.strip_prefix(':')?.trim().trim_matches('"').to_owned())
    })
}

#[test]
fn metrics_are_scraped_on_the_management_port_which_no_public_entry_reaches() {
    // Compose: every instance sets a management port, and Prometheus scrapes that one.
    let compose = shipped("docker/compose.yml");
    let management = yaml_value(&compose, "RAMPART__SERVER__MANAGEMENT_PORT")
        .expect("compose sets server.management_port");
    let public = yaml_value(&compose, "RAMPART__SERVER__PORT").expect("compose sets server.port");
    assert_ne!(management, public);
    let prometheus = shipped("docker/prometheus.yml");
    assert_eq!(
        yaml_value(&prometheus, "port").as_deref(),
        Some(management.as_str()),
        "Prometheus scrapes the management port"
    );
    assert_eq!(
        yaml_value(&prometheus, "metrics_path").as_deref(),
        Some("/metrics")
    );
    // nginx publishes the public port only, and refuses the ops endpoints itself.
    let nginx = shipped("docker/nginx.conf");
    assert!(
        nginx.contains(&format!("server rampart:{public} ")),
        "{nginx}"
    );
    assert!(!nginx.contains(&format!(":{management}")), "{nginx}");
    for refused in [
        "location = /metrics {\n        return 404;",
        "location ^~ /api/v1/ops/ {\n        return 404;",
        "location = /health/ready {\n        return 404;",
    ] {
        assert!(nginx.contains(refused), "nginx.conf has `{refused}`");
    }

    // Kubernetes: the ConfigMap's management port is a named container port, the one the
    // scrape annotation and the probes use; the Service exposes only the public one.
    let configmap = shipped("docker/k8s/configmap.yaml");
    let k8s_management = yaml_value(&configmap, "RAMPART__SERVER__MANAGEMENT_PORT")
        .expect("the ConfigMap sets server.management_port");
    let k8s_public = yaml_value(&configmap, "RAMPART__SERVER__PORT").expect("server.port");
    let deployment = shipped("docker/k8s/deployment.yaml");
    assert_eq!(
        yaml_value(&deployment, "prometheus.io/port").as_deref(),
        Some(k8s_management.as_str())
    );
    let ports: Vec<(String, String)> = deployment
        .lines()
        .zip(deployment.lines().skip(1))
        .filter_map(|(name, port)| {
            let name = name.trim().strip_prefix("- name: ")?;
            let port = port.trim().strip_prefix("containerPort: ")?;
            Some((name.to_owned(), port.to_owned()))
        })
        .collect();
    assert!(
        ports.contains(&("management".to_owned(), k8s_management.clone())),
        "{ports:?}"
    );
    assert!(
        ports.contains(&("http".to_owned(), k8s_public.clone())),
        "{ports:?}"
    );
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let after = deployment
            .split(&format!("{probe}:"))
            .nth(1)
            .unwrap_or_else(|| panic!("a {probe}"));
        assert_eq!(
            yaml_value(after, "port").as_deref(),
            Some("management"),
            "{probe} on the management port"
        );
    }
    let service = shipped("docker/k8s/service.yaml");
    assert_eq!(yaml_value(&service, "targetPort").as_deref(), Some("http"));
    assert!(!service.contains("management"), "{service}");
}

#[actix_rt::test]
async fn behind_the_shipped_nginx_the_public_gets_neither_metrics_nor_ops_stats() {
    let app = TestApp::builder()
        .configure(|s| s.server.management_port = Some(0))
        .spawn()
        .await;
    let upstream = app.base.trim_start_matches("http://").to_owned();
    let nginx = crate::scale_out::TestNginx::start(&[upstream.as_str()]);
    let via = |path: &str| format!("{}{path}", nginx.base);
    let get = |path: &str, admin: bool| {
        let mut req = app.client.get(via(path));
        if admin {
            req = req.bearer_auth(crate::support::ADMIN_TOKEN);
        }
        app.send(req, None)
    };
    assert_eq!(get("/health", false).await.status, 200);
    for path in [
        "/metrics",
        "/api/v1/ops/stats",
        "/health/ready",
        "/%6Detrics",
    ] {
        assert_eq!(get(path, true).await.status, 404, "{path} through nginx");
    }
    let m = app.create_merchant("Public").await;
    let store = get(&format!("/api/v1/stores/{}/products", m.id), false).await;
    assert_eq!(store.status, 200, "the API passes");
    // Prometheus, on the instance's management port, still gets its metrics.
    let management = app.management.clone().expect("management port");
    let scrape = app
        .send(app.client.get(format!("{management}/metrics")), None)
        .await;
    assert_eq!(scrape.status, 200);
    drop(nginx);
    app.stop().await;
}

/// Traces in the deployment: the instances export to the collector, the collector forwards to
/// Jaeger, Grafana has Jaeger as a datasource, and the latency panel links to its traces.
#[test]
fn the_trace_store_is_provisioned_in_grafana_and_fed_by_the_collector() {
    let read = |path: &str| {
        std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).expect(path)
    };
    let datasource = read("docker/grafana/provisioning/datasources/jaeger.yml");
    for line in ["type: jaeger", "uid: jaeger", "url: http://jaeger:16686"] {
        assert!(datasource.contains(line), "{line} in {datasource}");
    }
    let compose = read("docker/compose.yml");
    for line in [
        "RAMPART__TELEMETRY__OTLP_ENDPOINT: http://otel-collector:4318",
        "otel-collector:",
        "jaeger:",
    ] {
        assert!(compose.contains(line), "{line} in docker/compose.yml");
    }
    let collector = read("docker/otel/collector.yaml");
    assert!(collector.contains("endpoint: 0.0.0.0:4318"), "{collector}");
    assert!(collector.contains("endpoint: jaeger:4317"), "{collector}");
    let dashboard: Value =
        serde_json::from_str(&read("docker/grafana/dashboards/rampart.json")).expect("JSON");
    let latency = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .find(|p| p["title"] == "Latency percentiles")
        .expect("the latency panel");
    let link = latency["links"][0]["url"]
        .as_str()
        .expect("a link to traces");
    assert!(
        link.contains("jaeger") && link.contains("rampart"),
        "{link}"
    );
}
