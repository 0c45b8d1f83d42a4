//! Traces end to end: a checkout carrying a sampled `traceparent`, exported over OTLP/HTTP to a
//! real receiver (its protobuf decoded with the OpenTelemetry proto types), is one trace from the
//! HTTP request through its database command to the webhook job it caused and the delivery,
//! whose request to the merchant carries the same trace. Unsampled work exports nothing.

use crate::receivers::{Behaviour, Delivery, WebhookReceiver};
use crate::support::{wait_until, Merchant, OtherProcess, TestApp};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use std::time::Duration;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// Every span the collector received.
fn spans(collector: &WebhookReceiver) -> Vec<Span> {
    collector
        .received()
        .iter()
        .filter_map(|d: &Delivery| ExportTraceServiceRequest::decode(d.body.as_slice()).ok())
        .flat_map(|export| export.resource_spans)
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .collect()
}

/// An instance exporting to `collector` at `ratio`, dispatching jobs, its batches sent every
/// 100 ms; a merchant whose webhooks go to `hooks`, and a product.
async fn exporting_instance(
    collector: &WebhookReceiver,
    hooks: &WebhookReceiver,
    ratio: &str,
) -> (TestApp, OtherProcess, Merchant, serde_json::Value) {
    let app = TestApp::spawn().await;
    let merchant =
        crate::support::merchant_with_webhook_allowed(&app, "Traced Shop", &hooks.url).await;
    let product = app.create_product(&merchant, "TRACE-1", 500, 100).await;
    let log = std::env::temp_dir().join(format!("rampart-otel-{}.log", uuid::Uuid::new_v4()));
    let endpoint = collector.url.trim_end_matches('/').to_owned();
    let instance = OtherProcess::logging_to(
        &app,
        &[
            ("RAMPART__TELEMETRY__OTLP_ENDPOINT", endpoint.as_str()),
            ("RAMPART__TELEMETRY__SAMPLE_RATIO", ratio),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("RAMPART__JOBS__ENABLED", "true"),
            ("RAMPART__JOBS__POLL_INTERVAL_MS", "100"),
            ("RAMPART__WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true"),
        ],
        &log,
    )
    .await;
    (app, instance, merchant, product)
}

async fn checkout(
    instance: &OtherProcess,
    merchant: &Merchant,
    product: &serde_json::Value,
    traceparent: Option<&str>,
) {
    let mut request = instance
        .client
        .post(format!(
            "{}/api/v1/stores/{}/orders",
            instance.base, merchant.id
        ))
        .content_type("application/json");
    if let Some(traceparent) = traceparent {
        request = request.insert_header(("traceparent", traceparent));
    }
    let body = json!({"customer_email": "traced@example.com", "items": [{"product_id": product["id"], "quantity": 1}]});
    let response = request.send_body(body.to_string()).await.expect("checkout");
    assert_eq!(response.status(), 201);
}

#[actix_rt::test]
async fn a_checkout_with_a_sampled_traceparent_is_one_trace_down_to_the_webhook_delivery() {
    let collector = WebhookReceiver::start(Behaviour::Accept);
    let hooks = WebhookReceiver::start(Behaviour::Accept);
    // Sampling at 0: only the client's decision keeps this trace.
    let (_app, instance, merchant, product) = exporting_instance(&collector, &hooks, "0").await;
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    checkout(&instance, &merchant, &product, Some(&traceparent)).await;

    wait_until(
        "the webhook is delivered",
        Duration::from_secs(30),
        async || !hooks.received().is_empty(),
    )
    .await;
    let delivered = hooks.received()[0].header("traceparent").map(str::to_owned);
    let delivered = delivered.expect("the delivery carries a traceparent");
    assert_eq!(
        delivered.split('-').nth(1),
        Some(TRACE),
        "the delivery continues the checkout's trace: {delivered}"
    );
    assert!(delivered.ends_with("-01"), "sampled: {delivered}");

    let in_trace = |spans: &[Span]| -> Vec<Span> {
        spans
            .iter()
            .filter(|s| hex::encode(&s.trace_id) == TRACE)
            .cloned()
            .collect()
    };
    wait_until(
        "the trace is exported",
        Duration::from_secs(30),
        async || {
            let trace = in_trace(&spans(&collector));
            trace.iter().any(|s| s.name == "job webhook")
                && trace.iter().any(|s| s.name.starts_with("POST "))
        },
    )
    .await;
    let trace = in_trace(&spans(&collector));
    let names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();
    let request = trace
        .iter()
        .find(|s| s.name == "POST /api/v1/stores/{merchant_id}/orders")
        .unwrap_or_else(|| panic!("the request's span: {names:?}"));
    assert_eq!(
        hex::encode(&request.parent_span_id),
        CLIENT_SPAN,
        "the client's span is the request's parent"
    );
    // The checkout's database command, under the request.
    let descends_from = |span: &Span, ancestor: &Span| {
        let mut at = span.clone();
        for _ in 0..16 {
            if at.parent_span_id == ancestor.span_id {
                return true;
            }
            match trace.iter().find(|s| s.span_id == at.parent_span_id) {
                Some(parent) => at = parent.clone(),
                None => return false,
            }
        }
        false
    };
    let command = trace
        .iter()
        .find(|s| s.name.starts_with("db checkout::") && descends_from(s, request))
        .unwrap_or_else(|| panic!("the checkout's command under the request: {names:?}"));
    // Its waits (mailbox, connection) and its work apart, and the actor it ran on.
    let attributes: Vec<&str> = command.attributes.iter().map(|a| a.key.as_str()).collect();
    for key in ["mailbox_ms", "wait_ms", "work_ms", "db.actor", "db.command"] {
        assert!(attributes.contains(&key), "{key} in {attributes:?}");
    }
    let job = trace
        .iter()
        .find(|s| s.name == "job webhook")
        .expect("the webhook job's run");
    assert!(
        descends_from(job, request),
        "the job's run continues the request that enqueued it: {names:?}"
    );
    // The delivery's traceparent names a span of the job's run.
    let delivery_parent = delivered.split('-').nth(2).expect("a parent id");
    let sender = trace
        .iter()
        .find(|s| hex::encode(&s.span_id) == delivery_parent)
        .unwrap_or_else(|| panic!("the delivery's parent span {delivery_parent} in {names:?}"));
    assert!(sender.span_id == job.span_id || descends_from(sender, job));

    // A storefront read that misses the cache: the load, the tier that answered, and the
    // command with the rows it read.
    const READ: &str = "0af7651916cd43dd8448eb211c80319c";
    let read = instance
        .client
        .get(format!(
            "{}/api/v1/stores/{}/products/{}",
            instance.base,
            merchant.id,
            product["id"].as_str().expect("id")
        ))
        .insert_header(("traceparent", format!("00-{READ}-{CLIENT_SPAN}-01")))
        .send()
        .await
        .expect("read");
    assert_eq!(read.status(), 200);
    let attribute = |span: &Span, key: &str| {
        span.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .map(|v| format!("{:?}", v.value))
    };
    wait_until(
        "the read's trace is exported",
        Duration::from_secs(30),
        async || {
            spans(&collector)
                .iter()
                .any(|s| hex::encode(&s.trace_id) == READ && s.name == "db products::Get")
        },
    )
    .await;
    let read_trace: Vec<Span> = spans(&collector)
        .into_iter()
        .filter(|s| hex::encode(&s.trace_id) == READ)
        .collect();
    let load = read_trace
        .iter()
        .find(|s| s.name == "cache load")
        .expect("the cache load");
    let tier = attribute(load, "cache.tier").unwrap_or_default();
    assert!(tier.contains("database"), "{tier}");
    let get = read_trace
        .iter()
        .find(|s| s.name == "db products::Get")
        .expect("the command");
    assert_eq!(
        get.parent_span_id, load.span_id,
        "the command under the load"
    );
    let rows = attribute(get, "db.rows").unwrap_or_default();
    assert!(rows.contains("IntValue(1)"), "{rows}");
}

#[actix_rt::test]
async fn with_sampling_at_zero_and_no_incoming_context_nothing_is_exported() {
    let collector = WebhookReceiver::start(Behaviour::Accept);
    let hooks = WebhookReceiver::start(Behaviour::Accept);
    let (_app, instance, merchant, product) = exporting_instance(&collector, &hooks, "0").await;
    for _ in 0..5 {
        checkout(&instance, &merchant, &product, None).await;
    }
    wait_until(
        "every webhook is delivered",
        Duration::from_secs(30),
        async || hooks.received().len() == 5,
    )
    .await;
    // A sampled request afterwards: once its spans are in, anything the unsampled work would
    // have exported (earlier, in the same batches) is in too.
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    checkout(&instance, &merchant, &product, Some(&traceparent)).await;
    wait_until(
        "the sampled trace is exported",
        Duration::from_secs(30),
        async || {
            spans(&collector)
                .iter()
                .any(|s| hex::encode(&s.trace_id) == TRACE && s.name.starts_with("POST "))
        },
    )
    .await;
    let others: Vec<String> = spans(&collector)
        .iter()
        .filter(|s| hex::encode(&s.trace_id) != TRACE)
        .map(|s| s.name.clone())
        .collect();
    assert!(others.is_empty(), "unsampled spans exported: {others:?}");
}

#[actix_rt::test]
async fn with_sampling_at_one_a_request_without_context_starts_a_trace_of_its_own() {
    let collector = WebhookReceiver::start(Behaviour::Accept);
    let hooks = WebhookReceiver::start(Behaviour::Accept);
    let (_app, instance, merchant, product) = exporting_instance(&collector, &hooks, "1").await;
    checkout(&instance, &merchant, &product, None).await;
    wait_until(
        "the request's trace is exported",
        Duration::from_secs(30),
        async || {
            let spans = spans(&collector);
            spans.iter().any(|s| {
                s.name == "POST /api/v1/stores/{merchant_id}/orders" && s.parent_span_id.is_empty()
            }) && spans.iter().any(|s| s.name == "job webhook")
        },
    )
    .await;
}
