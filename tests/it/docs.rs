//! The documentation that stands on its own: the API page served without the internet, every
//! configuration key in the operator's guide with its real default, and the integrator's guide's
//! curl examples run against the service.

use crate::support::{TestApp, ADMIN_TOKEN};
use rampart::settings::Settings;
use serde_json::Value;
use std::collections::BTreeMap;

/// `src="..."` and `href="..."` in a page: what the browser fetches to show it.
fn references(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(at) = rest.find(attribute) {
            rest = &rest[at + attribute.len()..];
            let end = rest.find('"').unwrap_or(rest.len());
            found.push(rest[..end].to_owned());
        }
    }
    found
}

fn is_external(reference: &str) -> bool {
    let r = reference.trim().to_ascii_lowercase();
    r.starts_with("//") || (r.contains("://") && !r.starts_with("data:"))
}

#[actix_rt::test]
async fn the_api_page_is_served_from_the_binary_and_loads_nothing_from_elsewhere() {
    let app = TestApp::spawn().await;
    let plain = awc::Client::builder().disable_redirects().finish();
    let redirect = app.send(plain.get(app.url("/docs")), None).await;
    assert_eq!(redirect.status, 308);
    assert_eq!(redirect.header("location"), Some("/docs/"));
    let page = app.get("/docs/").await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/html"));
    let html = String::from_utf8(page.body).expect("utf8");
    let assets = references(&html);
    assert!(
        assets.len() >= 4,
        "the page names its scripts and styles: {assets:?}"
    );
    for asset in &assets {
        assert!(!is_external(asset), "the page loads {asset} from elsewhere");
        let reply = app
            .get(&format!("/docs/{}", asset.trim_start_matches("./")))
            .await;
        assert_eq!(reply.status, 200, "{asset}");
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        if asset.ends_with(".css") {
            // Stylesheets fetch through url(...): only inline data may appear there.
            for (at, _) in text.match_indices("url(") {
                let target: String = text[at + 4..].chars().take_while(|c| *c != ')').collect();
                let target = target.trim_matches(['"', '\'']);
                assert!(!is_external(target), "{asset} loads {target}");
            }
        }
    }
    // The initializer points Swagger UI at this service's own description, with the validator
    // badge (a request to validator.swagger.io) turned off.
    let init = app.get("/docs/swagger-initializer.js").await;
    assert_eq!(init.status, 200);
    let init = String::from_utf8(init.body).expect("utf8");
    assert!(init.contains("\"/api-docs/openapi.json\""), "{init}");
    assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");
    assert!(
        !init.contains("://"),
        "the initializer names no other host: {init}"
    );
    let spec = app.get("/api-docs/openapi.json").await;
    assert_eq!(spec.status, 200);
    assert_eq!(app.get("/docs/no-such-asset.js").await.status, 404);
    app.stop().await;
}

/// Every key of the settings types, dotted, with its built-in default as the guide writes it.
fn configuration_keys() -> BTreeMap<String, String> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
        match value {
            Value::Object(fields) if !fields.is_empty() => {
                for (name, inner) in fields {
                    let key = if prefix.is_empty() {
                        name.clone()
                    } else {
                        format!("{prefix}.{name}")
                    };
                    walk(&key, inner, out);
                }
            }
            Value::Null => {
                out.insert(prefix.to_owned(), "unset".to_owned());
            }
            other => {
                out.insert(prefix.to_owned(), format!("`{other}`"));
            }
        }
    }
    let defaults = Settings::defaults().expect("the built-in defaults load");
    let mut keys = BTreeMap::new();
    walk(
        "",
        &serde_json::to_value(defaults).expect("settings serialize"),
        &mut keys,
    );
    keys
}

/// The rows of the guide's configuration table: `| \`key\` | default | meaning |`.
fn documented_keys(guide: &str) -> BTreeMap<String, String> {
    let section = guide
        .split("\n## ")
        .find(|s| s.starts_with("Configuration"))
        .expect("a Configuration section");
    section
        .lines()
        .filter_map(|line| {
            let mut cells = line.strip_prefix("| `")?.splitn(3, '|');
            let key = cells.next()?.trim().trim_end_matches('`').to_owned();
            let default = cells.next()?.trim().to_owned();
            Some((key, default))
        })
        .collect()
}

#[test]
fn every_configuration_key_is_in_the_operators_guide_with_its_default() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operator.md"))
        .expect("docs/operator.md");
    let keys = configuration_keys();
    let documented = documented_keys(&guide);
    let expected: Vec<String> = keys
        .iter()
        .map(|(k, d)| format!("| `{k}` | {d} |"))
        .collect();
    let missing: Vec<&String> = keys
        .keys()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    let unknown: Vec<&String> = documented
        .keys()
        .filter(|k| !keys.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "missing from the guide: {missing:?}; in the guide but not a key: {unknown:?}\nthe keys:\n{}",
        expected.join("\n")
    );
    for (key, default) in &keys {
        assert_eq!(&documented[key], default, "the default of {key}");
    }
}

/// The `sh` blocks of a Markdown file, in order.
fn shell_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), text) => {
                block.push_str(text);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[actix_rt::test]
async fn the_integrators_guide_examples_run_against_the_service() {
    use crate::receivers::{Behaviour, WebhookReceiver};
    use crate::support::wait_until;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/integrator.md"))
        .expect("docs/integrator.md");
    let blocks = shell_blocks(&guide);
    assert!(blocks.len() >= 10, "the guide's examples: {}", blocks.len());
    // The signature check needs deliveries: the blocks before it run first, then the receiver's
    // deliveries are saved where the guide says the endpoint saved them.
    let split = blocks
        .iter()
        .position(|b| b.contains("$DELIVERIES"))
        .expect("a block verifies deliveries");

    let receiver = WebhookReceiver::start(Behaviour::Accept);
    let app = TestApp::builder()
        .configure(|s| {
            s.jobs.enabled = true;
            s.rate_limit.enabled = true;
            s.webhooks.allow_private_targets = true;
        })
        .spawn()
        .await;
    let work = tempfile_dir();
    let deliveries = work.join("deliveries");
    std::fs::create_dir_all(&deliveries).expect("deliveries dir");
    let mut shell = tokio::process::Command::new("bash")
        .args(["-euxo", "pipefail"])
        .current_dir(&work)
        .env("BASE", &app.base)
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("WEBHOOK_URL", &receiver.url)
        .env("DELIVERIES", &deliveries)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("bash");
    let mut stdin = shell.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(shell.stdout.take().expect("stdout")).lines();
    let mut stderr = shell.stderr.take().expect("stderr");
    let mut errors = async move || {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        // The trace's end: the command that failed.
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    let first_part = blocks[..split].concat() + "echo first-part-done\n";
    stdin.write_all(first_part.as_bytes()).await.expect("write");
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = stdout.next_line().await {
            if line == "first-part-done" {
                return true;
            }
        }
        false
    })
    .await;
    if done != Ok(true) {
        let _ = shell.kill().await;
        panic!(
            "an example of docs/integrator.md failed:\n{}",
            errors().await
        );
    }

    wait_until(
        "order.created and order.paid arrive",
        Duration::from_secs(20),
        async || receiver.received().len() >= 2,
    )
    .await;
    for (n, delivery) in receiver.received().iter().enumerate() {
        std::fs::write(deliveries.join(format!("{n}.body")), &delivery.body).expect("body");
        std::fs::write(
            deliveries.join(format!("{n}.signature")),
            &delivery.signature,
        )
        .expect("signature");
    }
    stdin
        .write_all(blocks[split..].concat().as_bytes())
        .await
        .expect("write");
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(60), shell.wait())
        .await
        .expect("the examples finish")
        .expect("bash ran");
    assert!(
        status.success(),
        "an example of docs/integrator.md failed ({status}):\n{}",
        errors().await
    );
    receiver.stop().await;
    app.stop().await;
}

/// A fresh directory under the system's temporary one.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rampart-docs-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
