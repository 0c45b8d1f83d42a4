//! Reports and the audit trail as API.md's "Background work" says: a reversed date range is 422
//! for reports and analytics alike, the sales CSV neutralises cells a spreadsheet would run as
//! formulas, and every merchant change leaves an audit entry with the fields an update changed.

use crate::support::{all_jobs_finished, wait_until, Merchant, TestApp, TestAppBuilder};
use serde_json::{json, Value};
use std::time::Duration;

/// Jobs dispatched at once, loopback webhook URLs allowed, mail into a temporary folder.
fn app_with_jobs() -> TestAppBuilder {
    let outbox = std::env::temp_dir().join(format!("rampart-outbox-{}", uuid::Uuid::new_v4()));
    TestApp::builder().configure(move |s| {
        s.jobs.enabled = true;
        s.jobs.poll_interval_ms = 100;
        s.webhooks.allow_private_targets = true;
        s.email.outbox_dir = outbox;
    })
}

/// The field names of a problem's `errors`.
fn fields(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors: {problem}"))
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect()
}

#[actix_rt::test]
async fn a_range_whose_from_is_after_its_to_is_422_naming_both_fields_for_reports_and_analytics() {
    let app = TestApp::spawn().await;
    let merchant = app.create_merchant("Ranges").await;

    let reply = app
        .post_json(
            "/api/v1/reports",
            Some(&merchant.api_key),
            &json!({"kind": "sales", "from": "2026-03-02", "to": "2026-03-01", "format": "csv"}),
        )
        .await;
    let problem = reply.problem(422);
    assert_eq!(fields(&problem), ["from", "to"], "{problem}");
    let reply = app
        .get_as(
            &merchant.api_key,
            "/api/v1/analytics/sales?from=2026-03-02&to=2026-03-01",
        )
        .await;
    let problem = reply.problem(422);
    assert_eq!(fields(&problem), ["from", "to"], "{problem}");
    let (reports, jobs): (i64, i64) = {
        let row = app
            .sql()
            .await
            .query_one(
                "SELECT (SELECT count(*) FROM reports), (SELECT count(*) FROM jobs)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((reports, jobs), (0, 0), "a refused report queues nothing");

    // A malformed day stays 400 for analytics; one day (from = to) is a range.
    let malformed = app
        .get_as(
            &merchant.api_key,
            "/api/v1/analytics/sales?from=2026-03-32&to=2026-03-01",
        )
        .await;
    malformed.problem(400);
    let one_day = app
        .get_as(
            &merchant.api_key,
            "/api/v1/analytics/sales?from=2026-03-01&to=2026-03-01",
        )
        .await;
    assert_eq!(one_day.status, 200);
    assert_eq!(one_day.json()["data"].as_array().unwrap().len(), 1);
    let reply = app
        .post_json(
            "/api/v1/reports",
            Some(&merchant.api_key),
            &json!({"kind": "sales", "from": "2026-03-01", "to": "2026-03-01"}),
        )
        .await;
    reply.assert_status(202);
}

/// RFC 4180 records of `text`: quoted fields may hold commas, doubled quotes and line breaks.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut records, mut record, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut chars, mut quoted) = (text.chars().peekable(), false);
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        field.is_empty() && record.is_empty(),
        "the CSV ends a record"
    );
    records
}

#[actix_rt::test]
async fn names_and_skus_that_would_run_as_formulas_reach_the_csv_as_text() {
    let app = app_with_jobs().spawn().await;
    let merchant = app.create_merchant("Formulas").await;
    let mut products = Vec::new();
    for (sku, name) in [
        ("+1", "=HYPERLINK(\"http://x\")"),
        ("-2", "@SUM(A1:A9)"),
        ("@3", "\tTabbed"),
        ("=4", "Plain, with a comma"),
    ] {
        let reply = app
            .post_json(
                "/api/v1/products",
                Some(&merchant.api_key),
                &json!({"sku": sku, "name": name, "price_cents": 100, "currency": "EUR", "stock": 10}),
            )
            .await;
        reply.assert_status(201);
        products.push(reply.json());
    }
    let items: Vec<Value> = products
        .iter()
        .map(|p| json!({"product_id": p["id"], "quantity": 1}))
        .collect();
    let order = app
        .checkout(
            &merchant.id,
            &json!({"customer_email": "f@example.com", "items": items}),
            None,
        )
        .await;
    order.assert_status(201);
    let day = order.json()["created_at"].as_str().unwrap()[..10].to_owned();

    let reply = app
        .post_json(
            "/api/v1/reports",
            Some(&merchant.api_key),
            &json!({"kind": "sales", "from": day, "to": day, "format": "csv"}),
        )
        .await;
    reply.assert_status(202);
    let location = reply.header("location").unwrap().to_owned();
    wait_until("the report is ready", Duration::from_secs(20), async || {
        app.get_as(&merchant.api_key, &location).await.json()["status"] == "ready"
    })
    .await;
    let csv = app
        .get_as(&merchant.api_key, &format!("{location}/download"))
        .await;
    assert_eq!(csv.status, 200);
    let text = String::from_utf8(csv.body).unwrap();
    assert!(
        text.contains(",'+1,\"'=HYPERLINK(\"\"http://x\"\")\",1,100\n"),
        "quoted after the apostrophe, its quotes doubled:\n{text}"
    );
    let records = parse_csv(&text);
    assert_eq!(records[0], ["day", "sku", "name", "units", "revenue_cents"]);
    let mut rows: Vec<Vec<String>> = records[1..].to_vec();
    rows.sort();
    let expected = |sku: &str, name: &str| -> Vec<String> {
        vec![
            day.clone(),
            sku.into(),
            name.into(),
            "1".into(),
            "100".into(),
        ]
    };
    assert_eq!(
        rows,
        [
            expected("'+1", "'=HYPERLINK(\"http://x\")"),
            expected("'-2", "'@SUM(A1:A9)"),
            expected("'=4", "Plain, with a comma"),
            expected("'@3", "'\tTabbed"),
        ],
        "{text}"
    );
}

/// The merchant's whole audit trail, oldest first, once it holds `count` entries.
async fn trail(app: &TestApp, merchant: &Merchant, count: usize) -> Vec<Value> {
    let read = async || {
        let page = app
            .get_as(&merchant.api_key, "/api/v1/audit?limit=100")
            .await;
        assert_eq!(page.status, 200);
        page.json()["data"].as_array().unwrap().clone()
    };
    wait_until(
        &format!("{count} audit entries"),
        Duration::from_secs(20),
        async || read().await.len() >= count,
    )
    .await;
    let mut entries = read().await;
    entries.reverse();
    entries
}

/// `(action, entity_id, changes)` of each entry.
fn summary(entries: &[Value]) -> Vec<(String, String, Value)> {
    entries
        .iter()
        .map(|e| {
            assert_eq!(e["actor"], "merchant", "{e}");
            for key in ["id", "entity_type", "at"] {
                assert!(e[key].is_string(), "{key}: {e}");
            }
            (
                e["action"].as_str().unwrap().to_owned(),
                e["entity_id"].as_str().unwrap().to_owned(),
                e["changes"].clone(),
            )
        })
        .collect()
}

#[actix_rt::test]
async fn every_catalog_change_is_audited_with_the_fields_it_changed_and_only_once_committed() {
    let app = app_with_jobs().spawn().await;
    let merchant = app.create_merchant("Catalog trail").await;
    let product = app.create_product(&merchant, "AUD-P", 1000, 5).await;
    let id = product["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/products/{id}");
    let patch = |body: Value| {
        let (path, key) = (path.clone(), merchant.api_key.clone());
        let app = &app;
        async move {
            app.json_request(awc::http::Method::PATCH, &path, Some(&key), &body)
                .await
        }
    };
    assert_eq!(patch(json!({"price_cents": 1250})).await.status, 200);
    let reply = patch(json!({"name": "Renamed", "description": "A lamp", "category": null})).await;
    reply.assert_status(200);
    let reply = app
        .post_json(
            &format!("{path}/stock"),
            Some(&merchant.api_key),
            &json!({"delta": 3}),
        )
        .await;
    reply.assert_status(200);
    // Refused changes change nothing, so they leave no entry: a stale If-Match, a duplicate sku.
    let stale = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&merchant.api_key)
        .insert_header(("If-Match", "\"v1\""))
        .content_type("application/json");
    let stale = app.send(stale, Some(br#"{"price_cents": 1}"#)).await;
    assert_eq!(stale.status, 412);
    let duplicate = app
        .post_json(
            "/api/v1/products",
            Some(&merchant.api_key),
            &json!({"sku": "AUD-P", "name": "Twin", "price_cents": 1, "currency": "EUR"}),
        )
        .await;
    assert_eq!(duplicate.status, 409);
    assert_eq!(app.archive_product(&merchant, &id).await.status, 204);
    // Archived already: nothing changes, nothing is recorded.
    assert_eq!(app.archive_product(&merchant, &id).await.status, 204);

    let entries = trail(&app, &merchant, 5).await;
    let change = |field: &str, old: Value, new: Value| json!({field: {"old": old, "new": new}});
    assert_eq!(
        summary(&entries),
        [
            ("product.created".to_owned(), id.clone(), Value::Null),
            (
                "product.updated".to_owned(),
                id.clone(),
                change("price_cents", json!(1000), json!(1250))
            ),
            (
                "product.updated".to_owned(),
                id.clone(),
                json!({
                    "name": {"old": "Product AUD-P", "new": "Renamed"},
                    "description": {"old": null, "new": "A lamp"},
                    "category": {"old": "general", "new": null},
                })
            ),
            (
                "product.stock_adjusted".to_owned(),
                id.clone(),
                change("stock", json!(5), json!(8))
            ),
            (
                "product.archived".to_owned(),
                id.clone(),
                change("status", json!("active"), json!("archived"))
            ),
        ],
        "{entries:#?}"
    );
    assert!(entries.iter().all(|e| e["entity_type"] == "product"));
    // Nothing else is on its way.
    all_jobs_finished(&app).await;
    assert_eq!(trail(&app, &merchant, 5).await.len(), 5);
}

#[actix_rt::test]
async fn merchant_settings_and_orders_are_audited_settings_with_old_and_new_values() {
    let app = app_with_jobs().spawn().await;
    let merchant = app.create_merchant("Before").await;
    let put = async |body: Value| {
        let reply = app
            .json_request(
                awc::http::Method::PUT,
                "/api/v1/merchant",
                Some(&merchant.api_key),
                &body,
            )
            .await;
        reply.assert_status(200);
    };
    put(json!({"name": "After"})).await;
    put(json!({"webhook_url": "http://127.0.0.1:9/hooks"})).await;
    put(json!({"name": "After", "webhook_url": null})).await;
    let entries = trail(&app, &merchant, 3).await;
    assert_eq!(
        summary(&entries),
        [
            (
                "merchant.updated".to_owned(),
                merchant.id.clone(),
                json!({"name": {"old": "Before", "new": "After"}})
            ),
            (
                "merchant.updated".to_owned(),
                merchant.id.clone(),
                json!({"webhook_url": {"old": null, "new": "http://127.0.0.1:9/hooks"}})
            ),
            (
                "merchant.updated".to_owned(),
                merchant.id.clone(),
                json!({"webhook_url": {"old": "http://127.0.0.1:9/hooks", "new": null}})
            ),
        ],
        "{entries:#?}"
    );
    assert!(entries.iter().all(|e| e["entity_type"] == "merchant"));

    // Checkouts and status changes are audited too: a status change with its old and new status,
    // a checkout with no changes (it creates).
    let product = app.create_product(&merchant, "ORD-A", 100, 5).await;
    let order = app
        .checkout(
            &merchant.id,
            &json!({"customer_email": "o@example.com", "items": [{"product_id": product["id"], "quantity": 1}]}),
            None,
        )
        .await;
    assert_eq!(order.status, 201);
    let order_id = order.json()["id"].as_str().unwrap().to_owned();
    let paid = app
        .post_json(
            &format!("/api/v1/orders/{order_id}/status"),
            Some(&merchant.api_key),
            &json!({"status": "paid"}),
        )
        .await;
    assert_eq!(paid.status, 200);
    let entries = trail(&app, &merchant, 6).await;
    let orders: Vec<(&str, &str, &str, &Value)> = entries[4..]
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
                e["entity_id"].as_str().unwrap(),
                &e["changes"],
            )
        })
        .collect();
    assert_eq!(
        orders,
        [
            (
                "order.created",
                "storefront",
                order_id.as_str(),
                &Value::Null
            ),
            (
                "order.paid",
                "merchant",
                order_id.as_str(),
                &json!({"status": {"old": "pending", "new": "paid"}})
            ),
        ]
    );
}
