//! SMS to customers who gave `customer_phone` at checkout: the phone on the order, a durable
//! job per confirmation and status change, delivered to a Twilio-compatible provider (a real
//! HTTP receiver on loopback) behind its own circuit, or written as files without one.

use crate::receivers::{Behaviour, WebhookReceiver};
use crate::support::{set_status, wait_until, Merchant, TestApp, TestAppBuilder};
use base64::Engine;
use rampart::settings::{Secret, Settings};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

const PHONE: &str = "+4915112345678";
const SENDER: &str = "+15005550006";

/// A fresh directory's path for the SMS files (not made).
fn outbox() -> PathBuf {
    std::env::temp_dir().join(format!("rampart-sms-{}", uuid::Uuid::new_v4()))
}

/// Jobs on with quick retries; SMS files (if any) in `dir`.
fn sms_app(dir: PathBuf) -> TestAppBuilder {
    TestApp::builder().configure(move |s: &mut Settings| {
        s.jobs.enabled = true;
        s.jobs.poll_interval_ms = 100;
        s.jobs.backoff_base_ms = 50;
        s.jobs.backoff_max_ms = 300;
        s.jobs.lease_secs = 2;
        s.email.outbox_dir =
            std::env::temp_dir().join(format!("rampart-eml-{}", uuid::Uuid::new_v4()));
        s.sms.outbox_dir = dir;
    })
}

/// The provider at `url`, with credentials and a sender.
fn provider(url: String) -> impl FnOnce(&mut Settings) {
    move |s| {
        s.sms.provider_url = Some(url);
        s.sms.account_sid = Some("AC0123".into());
        s.sms.auth_token = Some(Secret::new("token-xyz"));
        s.sms.from = Some(SENDER.into());
    }
}

async fn buy(app: &TestApp, merchant: &Merchant, product: &Value, phone: Option<&str>) -> Value {
    let mut body = json!({"customer_email": "buyer@example.com",
        "items": [{"product_id": product["id"], "quantity": 1}]});
    if let Some(phone) = phone {
        body["customer_phone"] = json!(phone);
    }
    let reply = app.checkout(&merchant.id, &body, None).await;
    reply.assert_status(201);
    reply.json()
}

/// The SMS jobs, oldest first: id, event, status.
async fn sms_jobs(app: &TestApp) -> Vec<(uuid::Uuid, String, String)> {
    app.sql()
        .await
        .query(
            "SELECT id, payload->>'event', status FROM jobs WHERE kind = 'order_sms' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn all_sms_succeeded(app: &TestApp, n: usize) {
    wait_until(
        &format!("{n} SMS jobs succeeded"),
        Duration::from_secs(30),
        async || {
            let jobs = sms_jobs(app).await;
            jobs.len() == n && jobs.iter().all(|j| j.2 == "succeeded")
        },
    )
    .await;
}

#[actix_rt::test]
async fn a_checkout_with_a_phone_reaches_the_provider_as_a_form_with_basic_auth_and_each_status_change_follows(
) {
    let receiver = WebhookReceiver::start(Behaviour::Accept);
    let dir = outbox();
    let app = sms_app(dir.clone())
        .configure(provider(receiver.url.clone()))
        .spawn()
        .await;
    let merchant = app.create_merchant("Lamp Shop").await;
    let product = app.create_product(&merchant, "SMS-1", 1999, 5).await;
    let order = buy(&app, &merchant, &product, Some(PHONE)).await;
    set_status(&app, &merchant, &order, "paid").await;
    wait_until("two SMS", Duration::from_secs(20), async || {
        receiver.received().len() >= 2
    })
    .await;
    all_sms_succeeded(&app, 2).await;
    let jobs = sms_jobs(&app).await;
    let received = receiver.received();
    assert_eq!(received.len(), 2, "one request per message");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("AC0123:token-xyz")
    );
    let number = order["number"].as_i64().unwrap();
    for (sms, (job, event, _)) in received.iter().zip(&jobs) {
        assert_eq!(sms.header("authorization"), Some(basic.as_str()));
        assert!(
            sms.header("content-type")
                .unwrap_or_default()
                .starts_with("application/x-www-form-urlencoded"),
            "{:?}",
            sms.headers
        );
        assert_eq!(
            sms.header("idempotency-key"),
            Some(job.to_string().as_str()),
            "the job id is the message's stable id ({event})"
        );
        let form = sms.form();
        let names: Vec<&str> = form.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["To", "From", "Body"]);
        assert_eq!(form[0].1, PHONE);
        assert_eq!(form[1].1, SENDER);
        assert!(form[2].1.starts_with("Lamp Shop: your order #"), "{form:?}");
        assert!(form[2].1.contains(&format!("#{number} ")), "{form:?}");
    }
    assert_eq!(jobs[0].1, "order.created");
    assert!(
        received[0].form()[2]
            .1
            .contains("is confirmed. Total 19.99 EUR"),
        "{:?}",
        received[0].form()
    );
    assert_eq!(jobs[1].1, "order.paid");
    assert!(
        received[1].form()[2].1.contains("is now paid"),
        "{:?}",
        received[1].form()
    );
    assert!(!dir.exists(), "with a provider, no SMS file is written");
    receiver.stop().await;
}

#[actix_rt::test]
async fn without_a_provider_each_sms_is_a_file_named_by_its_job_in_the_outbox() {
    let dir = outbox();
    let app = sms_app(dir.clone()).spawn().await;
    let merchant = app.create_merchant("File Shop").await;
    let product = app.create_product(&merchant, "SMS-FILE-1", 700, 5).await;
    buy(&app, &merchant, &product, None).await;
    let order = buy(&app, &merchant, &product, Some(PHONE)).await;
    set_status(&app, &merchant, &order, "cancelled").await;
    all_sms_succeeded(&app, 2).await;
    let jobs = sms_jobs(&app).await;
    assert_eq!(
        jobs.iter().map(|j| j.1.as_str()).collect::<Vec<_>>(),
        ["order.created", "order.cancelled"],
        "the order without a phone has no SMS"
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let expected: Vec<String> = jobs.iter().map(|j| format!("{}.sms", j.0)).collect();
    assert_eq!(
        names, expected,
        "one file per message, named by its job, nothing else"
    );
    let first = std::fs::read_to_string(dir.join(&expected[0])).unwrap();
    assert!(first.contains(&format!("To: {PHONE}\n")), "{first}");
    assert!(first.contains("File Shop: your order #"), "{first}");
    assert!(first.contains("is confirmed. Total 7.00 EUR."), "{first}");
    let second = std::fs::read_to_string(dir.join(&expected[1])).unwrap();
    assert!(second.contains("is now cancelled."), "{second}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A readiness check's state, e.g. of `circuit.sms`.
async fn check_state(app: &TestApp, check: &str) -> Value {
    app.get("/health/ready").await.json()["checks"][check]["state"].clone()
}

#[actix_rt::test]
async fn the_provider_down_opens_its_circuit_and_the_sms_goes_out_once_it_is_back() {
    // A port nothing listens on: the provider is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = sms_app(outbox())
        .configure(provider(format!("http://127.0.0.1:{port}/Messages.json")))
        .configure(|s| {
            s.jobs.max_attempts = 20;
            s.breakers.window = 4;
            s.breakers.minimum_calls = 2;
            s.breakers.open_ms = 1000;
            s.breakers.half_open_probes = 1;
        })
        .spawn()
        .await;
    assert_eq!(check_state(&app, "circuit.sms").await, "closed");
    let merchant = app.create_merchant("Down Shop").await;
    let product = app.create_product(&merchant, "SMS-DOWN-1", 500, 5).await;
    buy(&app, &merchant, &product, Some(PHONE)).await;
    wait_until(
        "the provider's circuit opens",
        Duration::from_secs(20),
        async || check_state(&app, "circuit.sms").await == "open",
    )
    .await;
    let (job, _, status) = sms_jobs(&app).await.remove(0);
    assert_ne!(status, "succeeded");
    let view = app
        .get_as(&merchant.api_key, &format!("/api/v1/jobs/{job}"))
        .await
        .json();
    assert_eq!(view["queue"], "sms", "{view}");
    assert!(
        view["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("SMS provider")),
        "{view}"
    );
    // The provider comes back: the SMS goes out at a later try, once.
    let receiver = WebhookReceiver::start_at(port, Behaviour::Accept);
    all_sms_succeeded(&app, 1).await;
    let received = receiver.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        received[0].header("idempotency-key"),
        Some(job.to_string().as_str())
    );
    assert_eq!(received[0].form()[0], ("To".to_owned(), PHONE.to_owned()));
    wait_until(
        "the provider's circuit closes",
        Duration::from_secs(10),
        async || check_state(&app, "circuit.sms").await == "closed",
    )
    .await;
    receiver.stop().await;
}

#[actix_rt::test]
async fn an_invalid_phone_is_422_naming_the_field() {
    let app = sms_app(outbox()).spawn().await;
    let merchant = app.create_merchant("Strict Shop").await;
    let product = app.create_product(&merchant, "SMS-BAD-1", 500, 5).await;
    for bad in [
        "0151 1234567",
        "+49 151 12345678",
        "4915112345678",
        "+04915112345678",
        "+1234567",
        "+1234567890123456",
        "",
    ] {
        let body = json!({"customer_email": "buyer@example.com", "customer_phone": bad,
            "items": [{"product_id": product["id"], "quantity": 1}]});
        let reply = app.checkout(&merchant.id, &body, None).await;
        let problem = reply.problem(422);
        let errors = problem["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{bad:?}: {problem}");
        assert_eq!(errors[0]["field"], "customer_phone", "{bad:?}: {problem}");
        assert!(
            errors[0]["message"].as_str().unwrap().contains("E.164"),
            "{bad:?}: {problem}"
        );
    }
    // Nothing was sold.
    let stock = app.get(&merchant.store_product(&product)).await.json()["stock"].clone();
    assert_eq!(stock, 5);
}

#[actix_rt::test]
async fn every_order_json_carries_customer_phone_null_when_none_was_given() {
    let app = sms_app(outbox()).spawn().await;
    let merchant = app.create_merchant("Phone Shop").await;
    let product = app.create_product(&merchant, "SMS-JSON-1", 500, 5).await;
    let with = buy(&app, &merchant, &product, Some(PHONE)).await;
    let without = buy(&app, &merchant, &product, None).await;
    assert_eq!(with["customer_phone"], PHONE);
    let has_null = |order: &Value| {
        order
            .as_object()
            .is_some_and(|o| o.get("customer_phone") == Some(&Value::Null))
    };
    assert!(has_null(&without), "{without}");
    let get = |order: &Value| format!("/api/v1/orders/{}", order["id"].as_str().unwrap());
    let one = app.get_as(&merchant.api_key, &get(&with)).await.json();
    assert_eq!(one["customer_phone"], PHONE, "{one}");
    let other = app.get_as(&merchant.api_key, &get(&without)).await.json();
    assert!(has_null(&other), "{other}");
    let list = app.get_as(&merchant.api_key, "/api/v1/orders").await.json();
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{list}");
    assert!(has_null(&data[0]), "newest first: {list}");
    assert_eq!(data[1]["customer_phone"], PHONE, "{list}");
    let path = format!("/api/v1/orders/{}/status", with["id"].as_str().unwrap());
    let changed = app
        .post_json(&path, Some(&merchant.api_key), &json!({"status": "paid"}))
        .await
        .json();
    assert_eq!(changed["customer_phone"], PHONE, "{changed}");
    // The OpenAPI description says so: the checkout's field with its pattern, the order's
    // field always present.
    let doc = app.get("/api-docs/openapi.json").await.json();
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["CheckoutBody"]["properties"]["customer_phone"]["pattern"],
        r"^\+[1-9][0-9]{7,14}$"
    );
    let required = schemas["Order"]["required"].as_array().unwrap();
    assert!(required.contains(&json!("customer_phone")), "{required:?}");
    assert!(
        schemas["Order"]["properties"]["customer_phone"].is_object(),
        "{}",
        schemas["Order"]
    );
}
