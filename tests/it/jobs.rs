//! Durable jobs: what a checkout and a status change set off (webhooks, mail, analytics, the
//! audit trail), reports, retries and dead jobs, the SSRF guard, and more than one instance
//! dispatching from one database. Real receivers on loopback.

use crate::receivers::{Behaviour, SmtpSink, WebhookReceiver};
use crate::support::{
    all_jobs_finished, jobs_started, set_status, wait_until, Merchant, OtherProcess, TestApp,
    TestAppBuilder, TestPg, ADMIN_TOKEN,
};
use hmac::{Hmac, Mac};
use rampart::settings::{Secret, Settings};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::time::Duration;

/// Jobs on, quick retries, loopback receivers allowed.
fn quick(s: &mut Settings) {
    s.jobs.enabled = true;
    s.jobs.poll_interval_ms = 100;
    s.jobs.backoff_base_ms = 50;
    s.jobs.backoff_max_ms = 300;
    s.jobs.max_attempts = 3;
    s.jobs.lease_secs = 2;
    s.webhooks.timeout_ms = 400;
    s.webhooks.allow_private_targets = true;
}

fn jobs_app() -> TestAppBuilder {
    let outbox = std::env::temp_dir().join(format!("rampart-outbox-{}", uuid::Uuid::new_v4()));
    TestApp::builder().configure(move |s| {
        quick(s);
        s.email.outbox_dir = outbox;
    })
}

/// A merchant whose webhooks go to `url`, and its signing secret.
async fn merchant_with_webhook(app: &TestApp, url: &str) -> (Merchant, String) {
    let (merchant, body) = app
        .create_merchant_with(&json!({"name": "Hooked", "webhook_url": url}))
        .await;
    (
        merchant,
        body["webhook_secret"].as_str().unwrap().to_owned(),
    )
}

/// A merchant whose webhooks go to `url` sells one unit of a new product (`sku`): one order,
/// and its `order.created` webhook queued. The merchant and its signing secret.
async fn one_order_hooked_to(app: &TestApp, url: &str, sku: &str) -> (Merchant, String) {
    let (merchant, secret) = merchant_with_webhook(app, url).await;
    let product = app.create_product(&merchant, sku, 500, 5).await;
    buy(app, &merchant, &product, 1).await;
    (merchant, secret)
}

/// Waits until the one webhook job has used every attempt.
async fn webhook_dead(app: &TestApp) {
    wait_until(
        "the webhook job is dead",
        Duration::from_secs(30),
        async || statuses(app, "webhook").await.get("dead") == Some(&1),
    )
    .await;
}

async fn buy(app: &TestApp, merchant: &Merchant, product: &Value, quantity: i64) -> Value {
    let body = json!({"customer_email": "buyer@example.com", "customer_name": "Ada",
        "items": [{"product_id": product["id"], "quantity": quantity}]});
    let reply = app.checkout(&merchant.id, &body, None).await;
    reply.assert_status(201);
    reply.json()
}

/// Jobs by status, from the table.
async fn statuses(app: &TestApp, kind: &str) -> BTreeMap<String, i64> {
    app.sql()
        .await
        .query(
            "SELECT status, count(*) FROM jobs WHERE kind = $1 GROUP BY status",
            &[&kind],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Waits until a job of `kind` is `status`.
async fn a_job_is(app: &TestApp, kind: &str, status: &str) {
    wait_until(
        &format!("a {kind} job is {status}"),
        Duration::from_secs(30),
        async || statuses(app, kind).await.contains_key(status),
    )
    .await;
}

/// Waits until no job of `kind` is left: a kind done in its claim leaves the queue with its
/// work.
async fn all_done_in_their_claim(app: &TestApp, kind: &str) {
    wait_until(
        &format!("every {kind} job done and gone"),
        Duration::from_secs(30),
        async || statuses(app, kind).await.is_empty(),
    )
    .await;
}

/// Runs `body` (PL/pgSQL) before each row inserted into `table`, in the inserting transaction:
/// a real failure or a slow write inside a job's run. Dropped with
/// `DROP TRIGGER before_insert ON <table>`.
async fn before_insert_into(sql: &tokio_postgres::Client, table: &str, body: &str) {
    sql.batch_execute(&format!(
        "CREATE FUNCTION before_insert_into_{table}() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN {body} END $$;
         CREATE TRIGGER before_insert BEFORE INSERT ON {table}
           FOR EACH ROW EXECUTE FUNCTION before_insert_into_{table}();"
    ))
    .await
    .unwrap();
}

/// Keeps a copy of every job written from now on, so that a test can run jobs again after they
/// left the queue (a job done in its claim is deleted with its work).
async fn keep_copies_of_jobs(sql: &tokio_postgres::Client) {
    sql.batch_execute("CREATE TABLE jobs_written (LIKE jobs)")
        .await
        .unwrap();
    before_insert_into(
        sql,
        "jobs",
        "INSERT INTO jobs_written SELECT NEW.*; RETURN NEW;",
    )
    .await;
}

/// Puts every job of `kind` written since [`keep_copies_of_jobs`] back in the queue, as a run
/// whose outcome was lost would leave it: each runs again. How many were put back.
async fn run_again(sql: &tokio_postgres::Client, kind: &str) -> u64 {
    sql.batch_execute("DROP TRIGGER IF EXISTS before_insert ON jobs")
        .await
        .unwrap();
    sql.execute(
        "INSERT INTO jobs SELECT * FROM jobs_written WHERE kind = $1
         ON CONFLICT (id) DO UPDATE SET status = 'queued', run_at = now()",
        &[&kind],
    )
    .await
    .unwrap()
}

/// The merchant's only webhook job, as `GET /api/v1/jobs/{id}` shows it.
async fn webhook_job(app: &TestApp, merchant: &Merchant) -> Value {
    let id: uuid::Uuid = app
        .sql()
        .await
        .query_one("SELECT id FROM jobs WHERE kind = 'webhook'", &[])
        .await
        .unwrap()
        .get(0);
    app.get_as(&merchant.api_key, &format!("/api/v1/jobs/{id}"))
        .await
        .json()
}

fn verify(secret: &str, delivery: &crate::receivers::Delivery) {
    let (t, v1) = delivery.signature.split_once(',').expect("t=..,v1=..");
    let t = t.strip_prefix("t=").expect("t=");
    let v1 = v1.strip_prefix("v1=").expect("v1=");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&delivery.body);
    assert_eq!(hex::encode(mac.finalize().into_bytes()), v1, "signature");
    let age = chrono::Utc::now().timestamp() - t.parse::<i64>().unwrap();
    assert!((0..60).contains(&age), "a fresh timestamp");
}

#[actix_rt::test]
async fn a_checkout_reaches_the_merchants_receiver_signed_and_each_status_change_follows_in_order()
{
    let receiver = WebhookReceiver::start(Behaviour::Accept);
    let app = jobs_app().spawn().await;
    let (merchant, secret) = merchant_with_webhook(&app, &receiver.url).await;
    let product = app.create_product(&merchant, "HOOK-1", 1250, 10).await;
    let order = buy(&app, &merchant, &product, 2).await;
    for to in ["paid", "shipped", "delivered"] {
        set_status(&app, &merchant, &order, to).await;
    }
    wait_until(
        "four events delivered",
        Duration::from_secs(20),
        async || receiver.received().len() >= 4,
    )
    .await;
    all_jobs_finished(&app).await;
    let received = receiver.received();
    let types: Vec<String> = received
        .iter()
        .map(|d| d.json()["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        [
            "order.created",
            "order.paid",
            "order.shipped",
            "order.delivered"
        ]
    );
    for delivery in &received {
        verify(&secret, delivery);
        let event = delivery.json();
        assert!(
            event["id"].is_string() && event["created_at"].is_string(),
            "{event}"
        );
        assert_eq!(event["data"]["id"], order["id"], "{event}");
    }
    let ids: std::collections::BTreeSet<String> = received
        .iter()
        .map(|d| d.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 4, "one event id per event");
    receiver.stop().await;
}

#[actix_rt::test]
async fn a_receiver_that_answers_500_first_gets_the_same_event_again_after_backoff() {
    let receiver = WebhookReceiver::start(Behaviour::FailFirst(1));
    let app = jobs_app().spawn().await;
    let (merchant, secret) = one_order_hooked_to(&app, &receiver.url, "RETRY-1").await;
    wait_until(
        "the event delivered twice",
        Duration::from_secs(20),
        async || receiver.received().len() >= 2,
    )
    .await;
    all_jobs_finished(&app).await;
    let received = receiver.received();
    assert_eq!(received.len(), 2, "one failure, one success");
    assert_eq!(
        received[0].json()["id"],
        received[1].json()["id"],
        "the same event id"
    );
    verify(&secret, &received[1]);
    let job = webhook_job(&app, &merchant).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    assert!(job["finished_at"].is_string(), "{job}");
    receiver.stop().await;
}

#[actix_rt::test]
async fn a_receiver_that_never_answers_leaves_the_job_dead_after_the_configured_attempts() {
    let receiver = WebhookReceiver::start(Behaviour::Hang);
    let app = jobs_app().spawn().await;
    let (merchant, _) = one_order_hooked_to(&app, &receiver.url, "HANG-1").await;
    webhook_dead(&app).await;
    let job = webhook_job(&app, &merchant).await;
    let job_id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["status"], "dead", "{job}");
    assert_eq!(job["attempts"], 3, "{job}");
    assert_eq!(job["max_attempts"], 3, "{job}");
    assert!(
        job["last_error"].as_str().unwrap().contains("127.0.0.1"),
        "{job}"
    );
    assert_eq!(receiver.received().len(), 3, "one request per attempt");
    // Ops see it: readiness and the metrics count the dead job of its queue (as sampled every
    // `health.refresh_ms`).
    let dead_in_readiness = async || {
        let ready = app.get("/health/ready").await.json();
        ready["checks"]["jobs"]["queues"]
            .as_array()
            .and_then(|queues| queues.iter().find(|q| q["queue"] == "webhooks").cloned())
            .is_some_and(|webhooks| webhooks["dead"] == 1)
    };
    wait_until(
        "readiness counts the dead job",
        Duration::from_secs(5),
        dead_in_readiness,
    )
    .await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("jobs_dead{queue=\"webhooks\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("jobs_runs_total{queue=\"webhooks\",outcome=\"dead\"} 1"),
        "{metrics}"
    );
    // Another merchant cannot see it.
    let other = app.create_merchant("Other").await;
    let reply = app
        .get_as(&other.api_key, &format!("/api/v1/jobs/{job_id}"))
        .await;
    assert_eq!(reply.status, 404);
}

#[actix_rt::test]
async fn the_confirmation_and_status_mails_reach_a_real_smtp_server() {
    let sink = SmtpSink::start().await;
    let url = sink.url.clone();
    let app = jobs_app()
        .configure(move |s| s.email.smtp_url = Some(Secret::new(url)))
        .spawn()
        .await;
    let merchant = app.create_merchant("Mail Shop").await;
    let product = app.create_product(&merchant, "MAIL-1", 1999, 5).await;
    let order = buy(&app, &merchant, &product, 2).await;
    set_status(&app, &merchant, &order, "paid").await;
    wait_until("two mails", Duration::from_secs(20), async || {
        sink.mails().len() >= 2
    })
    .await;
    all_jobs_finished(&app).await;
    let mails = sink.mails();
    assert_eq!(mails.len(), 2);
    assert!(
        mails[0].to[0].contains("buyer@example.com"),
        "{:?}",
        mails[0]
    );
    assert!(
        mails[0].from.contains("no-reply@rampart.local"),
        "{:?}",
        mails[0]
    );
    let number = order["number"].as_i64().unwrap();
    assert!(
        mails[0].data.contains(&format!(
            "Subject: Order #{number} at Mail Shop is confirmed"
        )),
        "{}",
        mails[0].data
    );
    assert!(mails[0].data.contains("39.98 EUR"), "{}", mails[0].data);
    assert!(mails[1].data.contains("is now paid"), "{}", mails[1].data);
}

/// A mail is sent outside any transaction, under its job's committed lease: a mail server
/// slower than the sessions' idle limit (1 s) ends nothing, the mail goes out once and the job
/// succeeds at its first attempt.
#[actix_rt::test]
async fn a_mail_server_slower_than_the_idle_limit_gets_the_mail_once() {
    let sink = SmtpSink::answering_after(Duration::from_millis(2500)).await;
    let url = sink.url.clone();
    let app = jobs_app()
        .configure(move |s| {
            s.email.smtp_url = Some(Secret::new(url));
            s.jobs.lease_secs = 60;
            s.database.idle_in_transaction_timeout_ms = 1000;
        })
        .spawn()
        .await;
    let merchant = app.create_merchant("Slow Mail").await;
    let product = app.create_product(&merchant, "SLOW-1", 500, 5).await;
    buy(&app, &merchant, &product, 1).await;
    a_job_is(&app, "order_email", "succeeded").await;
    assert_eq!(sink.mails().len(), 1, "sent once");
    let attempts: i32 = app
        .sql()
        .await
        .query_one("SELECT attempts FROM jobs WHERE kind = 'order_email'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 1);
}

/// A relay that takes each message and never answers: every send ends at `email.timeout_ms`
/// as a failed attempt, counted, and the job goes dead once its attempts are spent, rather than
/// holding its lease (and a connection) forever.
#[actix_rt::test]
async fn a_relay_that_never_answers_costs_an_attempt_per_send_and_the_mail_goes_dead() {
    let sink = SmtpSink::answering_after(Duration::from_secs(3600)).await;
    let url = sink.url.clone();
    let app = jobs_app()
        .configure(move |s| {
            s.email.smtp_url = Some(Secret::new(url));
            s.email.timeout_ms = 300;
            s.jobs.max_attempts = 2;
            s.jobs.lease_secs = 60;
            // The relay's silence must not open the circuit before the attempts are spent.
            s.breakers.minimum_calls = 100;
        })
        .spawn()
        .await;
    let merchant = app.create_merchant("Silent Relay").await;
    let product = app.create_product(&merchant, "HANG-1", 500, 5).await;
    buy(&app, &merchant, &product, 1).await;
    a_job_is(&app, "order_email", "dead").await;
    let row = app
        .sql()
        .await
        .query_one(
            "SELECT attempts, last_error FROM jobs WHERE kind = 'order_email'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 2, "each silent send spent an attempt");
    let error: String = row.get(1);
    assert!(error.contains("no answer within"), "{error}");
    assert_eq!(
        sink.mails().len(),
        2,
        "the relay took the message at each attempt"
    );
}

#[actix_rt::test]
async fn without_smtp_the_mails_are_eml_files_in_the_outbox() {
    let dir = std::env::temp_dir().join(format!("rampart-eml-{}", uuid::Uuid::new_v4()));
    let outbox = dir.clone();
    let app = jobs_app()
        .configure(move |s| s.email.outbox_dir = outbox)
        .spawn()
        .await;
    let merchant = app.create_merchant("File Shop").await;
    let product = app.create_product(&merchant, "EML-1", 700, 5).await;
    let sql = app.sql().await;
    keep_copies_of_jobs(&sql).await;
    buy(&app, &merchant, &product, 1).await;
    // Named by the job, as its Message-ID is.
    let job: uuid::Uuid = sql
        .query_one("SELECT id FROM jobs WHERE kind = 'order_email'", &[])
        .await
        .unwrap()
        .get(0);
    let file = dir.join(format!("{job}.eml"));
    wait_until(
        "the .eml file is written",
        Duration::from_secs(20),
        async || file.exists(),
    )
    .await;
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("To: buyer@example.com"), "{text}");
    assert!(text.contains("is confirmed"), "{text}");
    assert!(
        text.contains(&format!("Message-ID: <{job}@rampart>")),
        "{text}"
    );
    // Running the job again writes the same file, not a second one.
    all_jobs_finished(&app).await;
    assert_eq!(run_again(&sql, "order_email").await, 1);
    all_jobs_finished(&app).await;
    // Nothing else is left beside it (no temporary file).
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names, [file]);
}

#[actix_rt::test]
async fn a_report_goes_queued_running_ready_and_its_csv_matches_the_orders_row_for_row() {
    let app = jobs_app().spawn().await;
    let merchant = app.create_merchant("Reports").await;
    let a = app.create_product(&merchant, "REP-A", 1000, 50).await;
    let b = app.create_product(&merchant, "REP,\"B\"", 250, 50).await;
    let mut orders = Vec::new();
    for (product, quantity) in [(&a, 1), (&b, 3), (&a, 2), (&b, 1), (&a, 5)] {
        orders.push(buy(&app, &merchant, product, quantity).await);
    }
    set_status(&app, &merchant, &orders[4], "cancelled").await;
    // What the orders say: units and revenue per day and product, cancelled orders left out.
    let mut expected: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for order in &orders[..4] {
        let day = order["created_at"].as_str().unwrap()[..10].to_owned();
        for item in order["items"].as_array().unwrap() {
            let q = item["quantity"].as_i64().unwrap();
            let e = expected
                .entry((day.clone(), item["sku"].as_str().unwrap().to_owned()))
                .or_default();
            e.0 += q;
            e.1 += q * item["unit_price_cents"].as_i64().unwrap();
        }
    }
    let today = chrono::Utc::now().date_naive();

    // A session holding order_items keeps the report's read waiting: it is seen running.
    let blocker = app.sql().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE order_items IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let reply = app
        .post_json(
            "/api/v1/reports",
            Some(&merchant.api_key),
            &json!({"kind": "sales", "from": (today - chrono::Days::new(1)).to_string(), "to": today.to_string(), "format": "csv"}),
        )
        .await;
    reply.assert_status(202);
    let report = reply.json();
    assert_eq!(report["status"], "queued");
    assert!(report["job_id"].is_string());
    let location = reply.header("location").unwrap().to_owned();
    let status = async || {
        app.get_as(&merchant.api_key, &location).await.json()["status"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    wait_until(
        "the report is running",
        Duration::from_secs(20),
        async || status().await == "running",
    )
    .await;
    let early = app
        .get_as(&merchant.api_key, &format!("{location}/download"))
        .await;
    assert_eq!(early.status, 409, "not ready yet");
    blocker.batch_execute("COMMIT").await.unwrap();
    wait_until("the report is ready", Duration::from_secs(20), async || {
        status().await == "ready"
    })
    .await;
    let ready = app.get_as(&merchant.api_key, &location).await.json();
    assert_eq!(ready["download_url"], format!("{location}/download"));

    let csv = app
        .get_as(&merchant.api_key, ready["download_url"].as_str().unwrap())
        .await;
    assert_eq!(csv.status, 200);
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    let text = String::from_utf8(csv.body).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("day,sku,name,units,revenue_cents"));
    let mut got: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for line in lines {
        // The quoted sku is the only field with a comma: split from both ends.
        let (day, rest) = line.split_once(',').unwrap();
        let mut tail = rest.rsplitn(3, ',');
        let revenue: i64 = tail.next().unwrap().parse().unwrap();
        let units: i64 = tail.next().unwrap().parse().unwrap();
        let sku_name = tail.next().unwrap();
        let sku = if let Some(quoted) = sku_name.strip_prefix('"') {
            let end = quoted.find("\",").unwrap();
            quoted[..end].replace("\"\"", "\"")
        } else {
            sku_name.split(',').next().unwrap().to_owned()
        };
        got.insert((day.to_owned(), sku), (units, revenue));
    }
    assert_eq!(got, expected);

    // Another merchant's report is not found.
    let other = app.create_merchant("Other").await;
    assert_eq!(app.get_as(&other.api_key, &location).await.status, 404);
}

#[actix_rt::test]
async fn analytics_equal_the_orders_totals_per_inclusive_day_even_after_the_jobs_ran_twice() {
    let app = jobs_app().spawn().await;
    let merchant = app.create_merchant("Numbers").await;
    let product = app.create_product(&merchant, "AN-1", 1500, 100).await;
    let sql = app.sql().await;
    keep_copies_of_jobs(&sql).await;
    let mut orders = Vec::new();
    for q in [1, 2, 3, 4] {
        orders.push(buy(&app, &merchant, &product, q).await);
    }
    set_status(&app, &merchant, &orders[1], "cancelled").await;
    all_jobs_finished(&app).await;
    let today = chrono::Utc::now().date_naive();
    let (yesterday, tomorrow) = (today - chrono::Days::new(1), today + chrono::Days::new(1));
    let path = format!("/api/v1/analytics/sales?from={yesterday}&to={tomorrow}");
    let expect = json!({"data": [
        {"day": yesterday.to_string(), "orders": 0, "units": 0, "revenue_cents": 0},
        {"day": today.to_string(), "orders": 3, "units": 8, "revenue_cents": 12000},
        {"day": tomorrow.to_string(), "orders": 0, "units": 0, "revenue_cents": 0},
    ]});
    assert_eq!(app.get_as(&merchant.api_key, &path).await.json(), expect);

    // Every analytics job runs again: nothing changes.
    let again = run_again(&sql, "order_analytics").await;
    assert_eq!(again, 5, "four creations and one cancellation");
    all_jobs_finished(&app).await;
    assert_eq!(app.get_as(&merchant.api_key, &path).await.json(), expect);

    let one_day = format!("/api/v1/analytics/sales?from={today}&to={today}");
    let data = app.get_as(&merchant.api_key, &one_day).await.json();
    assert_eq!(
        data["data"].as_array().unwrap().len(),
        1,
        "both ends inclusive"
    );
    let reversed = app
        .get_as(
            &merchant.api_key,
            &format!("/api/v1/analytics/sales?from={today}&to={yesterday}"),
        )
        .await
        .problem(422);
    let fields: Vec<&str> = reversed["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["from", "to"],
        "a reversed range names both: {reversed}"
    );
    for bad in [
        "from=2026-02-30&to=2026-03-01",
        "from=1969-12-31&to=1970-01-01",
        "to=2026-01-01",
    ] {
        let reply = app
            .get_as(&merchant.api_key, &format!("/api/v1/analytics/sales?{bad}"))
            .await;
        assert_eq!(reply.status, 400, "{bad}");
    }
}

/// Analytics and audit jobs run in their claim: the claim, the work and the outcome are one
/// transaction. A run whose work fails leaves nothing behind (no aggregate, no applied mark,
/// the job not marked succeeded): the job spends the attempt and is retried after backoff,
/// and once the cause is gone its work is done exactly once.
#[actix_rt::test]
async fn an_analytics_run_that_fails_leaves_nothing_and_its_retry_applies_the_order_once() {
    // Attempts to spare while the cause is in place.
    let app = jobs_app()
        .configure(|s| s.jobs.max_attempts = 50)
        .spawn()
        .await;
    let merchant = app.create_merchant("Refused").await;
    let product = app.create_product(&merchant, "IC-1", 700, 10).await;
    let sql = app.sql().await;
    // A real database error inside the run, after its claim and its first write.
    before_insert_into(
        &sql,
        "analytics_daily",
        "RAISE EXCEPTION 'aggregates refused by the test';",
    )
    .await;
    buy(&app, &merchant, &product, 2).await;
    a_job_is(&app, "order_analytics", "failed").await;
    let row = sql
        .query_one(
            "SELECT attempts, last_error, finished_at IS NULL, run_at > created_at,
                    (SELECT count(*) FROM analytics_applied), (SELECT count(*) FROM analytics_daily),
                    id::text
             FROM jobs WHERE kind = 'order_analytics'",
            &[],
        )
        .await
        .unwrap();
    let (attempts, error): (i32, String) = (row.get(0), row.get(1));
    assert!(attempts >= 1, "the failed run spent its attempt");
    assert!(error.contains("aggregates refused by the test"), "{error}");
    assert!(row.get::<_, bool>(2), "not finished");
    assert!(row.get::<_, bool>(3), "retried later, after backoff");
    assert_eq!(
        (row.get::<_, i64>(4), row.get::<_, i64>(5)),
        (0, 0),
        "the run's writes were undone with it"
    );
    let job = format!("/api/v1/jobs/{}", row.get::<_, String>(6));
    let view = app.get_as(&merchant.api_key, &job).await.json();
    assert_eq!(view["status"], "failed", "{view}");

    sql.batch_execute("DROP TRIGGER before_insert ON analytics_daily")
        .await
        .unwrap();
    all_done_in_their_claim(&app, "order_analytics").await;
    let today = chrono::Utc::now().date_naive();
    let path = format!("/api/v1/analytics/sales?from={today}&to={today}");
    assert_eq!(
        app.get_as(&merchant.api_key, &path).await.json(),
        json!({"data": [{"day": today.to_string(), "orders": 1, "units": 2, "revenue_cents": 1400}]})
    );
    let applied: i64 = sql
        .query_one("SELECT count(*) FROM analytics_applied", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 1, "applied once");
    // Done in its claim, the job left the queue with its work.
    assert_eq!(app.get_as(&merchant.api_key, &job).await.status, 404);
}

/// A run in its claim holds its jobs by its transaction. An instance frozen in the middle of
/// one (SIGSTOP) has that transaction ended by PostgreSQL once it has idled for the lease: the
/// run is undone, its attempt included, and another instance runs the job, once.
#[actix_rt::test]
async fn a_frozen_instance_gives_back_the_jobs_it_runs_in_their_claim_within_its_lease() {
    // The in-process instance sets up and reads; it dispatches nothing.
    let app = TestApp::builder()
        .configure(|s| s.jobs.enabled = false)
        .spawn()
        .await;
    let merchant = app.create_merchant("Frozen").await;
    let product = app.create_product(&merchant, "FR-1", 100, 5).await;
    let sql = app.sql().await;
    // The product's own audit job out of the way: the run caught below is the order's.
    sql.execute("DELETE FROM jobs WHERE kind = 'audit'", &[])
        .await
        .unwrap();
    // Audit entries are written slowly, so that the run can be caught inside its transaction.
    before_insert_into(&sql, "audit_log", "PERFORM pg_sleep(1); RETURN NEW;").await;
    let outbox = std::env::temp_dir().join(format!("rampart-frozen-{}", uuid::Uuid::new_v4()));
    let outbox_text = outbox.display().to_string();
    let env = [
        ("RAMPART__JOBS__ENABLED", "true"),
        ("RAMPART__JOBS__POLL_INTERVAL_MS", "100"),
        ("RAMPART__JOBS__LEASE_SECS", "2"),
        ("RAMPART__EMAIL__OUTBOX_DIR", outbox_text.as_str()),
        // The lease bounds the run, not the sessions' own limit (longer than the wait below).
        (
            "RAMPART__DATABASE__IDLE_IN_TRANSACTION_TIMEOUT_MS",
            "600000",
        ),
    ];
    let first = OtherProcess::logging_to(&app, &env, &outbox.with_extension("log")).await;
    buy(&app, &merchant, &product, 1).await;
    wait_until(
        "the first instance runs the audit job",
        Duration::from_secs(30),
        async || {
            let inside: i64 = sql
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE state = 'active' AND query LIKE 'INSERT INTO audit_log%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            inside == 1
        },
    )
    .await;
    first.freeze();

    // Another instance can take the job only once PostgreSQL has ended the frozen run.
    let second = TestApp::builder()
        .beside(&app)
        .configure(|s| {
            quick(s);
            s.email.outbox_dir = outbox.clone();
        })
        .spawn()
        .await;
    all_done_in_their_claim(&app, "audit").await;
    let entries: i64 = sql
        .query_one("SELECT count(*) FROM audit_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        (
            entries,
            jobs_started(&second.metrics().await, Some("audit"))
        ),
        (1, 1),
        "the frozen run left no entry: the second instance's run wrote the only one"
    );
    first.thaw();
}

#[actix_rt::test]
async fn each_change_leaves_an_audit_entry_newest_first() {
    let app = jobs_app().spawn().await;
    let merchant = app.create_merchant("Audited").await;
    let product = app.create_product(&merchant, "AUD-1", 100, 5).await;
    let order = buy(&app, &merchant, &product, 1).await;
    set_status(&app, &merchant, &order, "paid").await;
    let reply = app
        .json_request(
            awc::http::Method::PUT,
            "/api/v1/merchant",
            Some(&merchant.api_key),
            &json!({"name": "Audited Ltd"}),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["name"], "Audited Ltd");
    all_jobs_finished(&app).await;
    let trail = app
        .get_as(&merchant.api_key, "/api/v1/audit?limit=2")
        .await
        .json();
    let actions: Vec<&str> = trail["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["merchant.updated", "order.paid"], "{trail}");
    assert_eq!(trail["has_more"], true);
    let next = trail["next_cursor"].as_str().unwrap();
    let rest = app
        .get_as(
            &merchant.api_key,
            &format!("/api/v1/audit?limit=2&cursor={next}"),
        )
        .await
        .json();
    assert_eq!(rest["data"][0]["action"], "order.created", "{rest}");
    assert_eq!(rest["data"][0]["entity_id"], order["id"]);
    assert_eq!(rest["data"][0]["actor"], "storefront");
}

/// Every spelling of an internal address the guard must see through.
const INTERNAL: &[&str] = &[
    "http://127.0.0.1/x",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://0x7f.1/",
    "http://127.1/",
    "http://127.0.0.1./",
    "http://localhost./",
    "http://10.0.0.8/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest",
    "http://100.64.0.1/",
    "http://0.0.0.0/",
    "http://224.0.0.1/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::127.0.0.1]/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
];

#[actix_rt::test]
async fn webhook_urls_reaching_internal_addresses_are_refused_at_creation_update_and_delivery() {
    let receiver = WebhookReceiver::start(Behaviour::Accept);
    let app = jobs_app()
        .configure(|s| s.webhooks.allow_private_targets = false)
        .spawn()
        .await;
    let merchant = app.create_merchant("Guarded").await;
    for url in INTERNAL {
        let created = app
            .post_json(
                "/api/v1/admin/merchants",
                Some(ADMIN_TOKEN),
                &json!({"name": "Sneaky", "webhook_url": url}),
            )
            .await;
        assert_eq!(created.status, 422, "creation with {url}");
        let updated = app
            .json_request(
                awc::http::Method::PUT,
                "/api/v1/merchant",
                Some(&merchant.api_key),
                &json!({"webhook_url": url}),
            )
            .await;
        assert_eq!(updated.status, 422, "update to {url}");
        assert_eq!(updated.problem(422)["errors"][0]["field"], "webhook_url");
    }
    // A URL that got in anyway (written before the rule, or a name that resolved elsewhere at
    // creation) is checked again on the address the delivery would connect to.
    app.sql()
        .await
        .execute(
            "UPDATE merchants SET webhook_url = $1 WHERE id = $2::text::uuid",
            &[&receiver.url, &merchant.id],
        )
        .await
        .unwrap();
    let product = app.create_product(&merchant, "SSRF-1", 100, 100).await;
    buy(&app, &merchant, &product, 1).await;
    // And every other form, written past the API the same way.
    let sql = app.sql().await;
    for url in INTERNAL {
        sql.execute(
            "UPDATE merchants SET webhook_url = $1 WHERE id = $2::text::uuid",
            &[url, &merchant.id],
        )
        .await
        .unwrap();
        buy(&app, &merchant, &product, 1).await;
    }
    let refused = INTERNAL.len() as i64 + 1;
    wait_until(
        "every delivery is refused",
        Duration::from_secs(30),
        async || statuses(&app, "webhook").await.get("dead") == Some(&refused),
    )
    .await;
    for row in sql
        .query(
            "SELECT last_error, attempts FROM jobs WHERE kind = 'webhook'",
            &[],
        )
        .await
        .unwrap()
    {
        let (error, attempts): (String, i32) = (row.get(0), row.get(1));
        assert!(error.contains("refused"), "{error}");
        assert_eq!(attempts, 1, "a refused destination is not retried");
    }
    assert!(
        receiver.received().is_empty(),
        "nothing reached the receiver"
    );
    // A public URL is accepted, and null removes it.
    for url in [json!("https://93.184.215.14/hooks"), Value::Null] {
        let reply = app
            .json_request(
                awc::http::Method::PUT,
                "/api/v1/merchant",
                Some(&merchant.api_key),
                &json!({"webhook_url": url}),
            )
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["webhook_url"], url);
    }
    receiver.stop().await;
}

#[actix_rt::test]
async fn two_instances_dispatching_from_one_database_run_every_job_once() {
    let receiver = WebhookReceiver::start(Behaviour::Accept);
    // The subject is the claim: one instance's claim keeps the other off a job. A run that
    // outlives its lease is given to the other instance by design, and the quick 2 s lease can
    // run out on a loaded test machine, so here the lease is long.
    let long_lease = |s: &mut Settings| s.jobs.lease_secs = 60;
    let first = jobs_app().configure(long_lease).spawn().await;
    let second = jobs_app()
        .configure(long_lease)
        .beside(&first)
        .spawn()
        .await;
    let (merchant, _) = merchant_with_webhook(&first, &receiver.url).await;
    let product = first.create_product(&merchant, "TWO-1", 100, 1000).await;
    // The product's creation is audited too: one audit job beside the orders'.
    let mut checkouts = Vec::new();
    for n in 0..40 {
        let app = if n % 2 == 0 { &first } else { &second };
        checkouts.push(buy(app, &merchant, &product, 1));
    }
    futures_util::future::join_all(checkouts).await;
    all_jobs_finished(&first).await;
    // Mail and webhooks stay `succeeded`; analytics and audit leave the queue with their work.
    let row = first
        .sql()
        .await
        .query_one(
            "SELECT (SELECT string_agg(kind || ':' || status || '=' || n, ' ' ORDER BY kind)
                     FROM (SELECT kind, status, count(*) n FROM jobs GROUP BY 1, 2) k),
                    (SELECT count(*) FROM audit_log WHERE entity_type = 'order'),
                    (SELECT count(*) FROM analytics_applied)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        (
            "order_email:succeeded=40 webhook:succeeded=40".to_owned(),
            40,
            40
        ),
        "every order's webhook, audit entry and analytics"
    );
    let (a, b) = (
        jobs_started(&first.metrics().await, None),
        jobs_started(&second.metrics().await, None),
    );
    assert_eq!(
        a + b,
        40 * 4 + 1,
        "email, webhook, analytics and audit per order and the product's audit, none run twice ({a} + {b} runs)"
    );
    assert!(a > 0 && b > 0, "both instances dispatched ({a}, {b})");
    let events: std::collections::BTreeSet<String> = receiver
        .received()
        .iter()
        .map(|d| d.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(receiver.received().len(), 40);
    assert_eq!(events.len(), 40);
    receiver.stop().await;
}

/// Checkouts against another process until `n` are acknowledged (201) or `within` passes; the
/// ids acknowledged. Failures (the process killed, PostgreSQL down) are expected.
async fn checkouts_against(
    base: &str,
    merchant: &Merchant,
    product: &Value,
    n: usize,
    within: Duration,
) -> Vec<String> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(5))
        .finish();
    let body = json!({"customer_email": "crash@example.com", "items": [{"product_id": product["id"], "quantity": 1}]});
    let until = std::time::Instant::now() + within;
    let mut acknowledged = Vec::new();
    while acknowledged.len() < n && std::time::Instant::now() < until {
        let sent = client
            .post(format!("{base}/api/v1/stores/{}/orders", merchant.id))
            .content_type("application/json")
            .send_body(body.to_string())
            .await;
        match sent {
            Ok(mut res) if res.status() == 201 => {
                if let Ok(bytes) = res.body().await {
                    let order: Value = serde_json::from_slice(&bytes).unwrap();
                    acknowledged.push(order["id"].as_str().unwrap().to_owned());
                }
            }
            // Refused (503 while PostgreSQL is down) or not connected: try again shortly.
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    acknowledged
}

#[actix_rt::test]
async fn after_a_killed_service_and_a_crashed_postgres_every_acknowledged_orders_jobs_are_done() {
    let pg: &'static TestPg = Box::leak(Box::new(TestPg::durable()));
    let receiver = WebhookReceiver::start(Behaviour::Accept);
    // The in-process instance only sets up and reads; the processes under test dispatch.
    let app = TestApp::builder().on(pg).spawn().await;
    let merchant =
        crate::support::merchant_with_webhook_allowed(&app, "Crash Shop", &receiver.url).await;
    let product = app.create_product(&merchant, "CRASH-1", 100, 100_000).await;
    let outbox = std::env::temp_dir().join(format!("rampart-crash-{}", uuid::Uuid::new_v4()));
    let outbox_text = outbox.display().to_string();
    let env = [
        ("RAMPART__JOBS__ENABLED", "true"),
        ("RAMPART__JOBS__POLL_INTERVAL_MS", "100"),
        ("RAMPART__JOBS__LEASE_SECS", "2"),
        ("RAMPART__JOBS__BACKOFF_BASE_MS", "50"),
        ("RAMPART__JOBS__BACKOFF_MAX_MS", "500"),
        ("RAMPART__WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true"),
        ("RAMPART__EMAIL__OUTBOX_DIR", outbox_text.as_str()),
    ];
    let log = outbox.with_extension("log");

    // The first process is killed (SIGKILL) while it takes checkouts and runs their jobs.
    let first = OtherProcess::logging_to(&app, &env, &log).await;
    let mut acknowledged = checkouts_against(
        &first.base,
        &merchant,
        &product,
        30,
        Duration::from_secs(30),
    )
    .await;
    let first_base = first.base.clone();
    let racing = checkouts_against(
        &first_base,
        &merchant,
        &product,
        1000,
        Duration::from_secs(3),
    );
    let kill = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(first);
    };
    let (more, ()) = futures_util::join!(racing, kill);
    acknowledged.extend(more);

    // The second process meets PostgreSQL stopped at once (`pg_ctl stop -m immediate`).
    let second = OtherProcess::logging_to(&app, &env, &log).await;
    acknowledged.extend(
        checkouts_against(
            &second.base,
            &merchant,
            &product,
            20,
            Duration::from_secs(30),
        )
        .await,
    );
    pg.cluster.stop_with("immediate").expect("stop PostgreSQL");
    let refused =
        checkouts_against(&second.base, &merchant, &product, 1, Duration::from_secs(1)).await;
    assert!(
        refused.is_empty(),
        "no checkout is acknowledged while PostgreSQL is down"
    );
    pg.cluster.start_again().expect("start PostgreSQL");
    wait_until(
        "the service is ready again",
        Duration::from_secs(30),
        async || second.status("/health/ready").await == Some(200),
    )
    .await;
    acknowledged.extend(
        checkouts_against(
            &second.base,
            &merchant,
            &product,
            20,
            Duration::from_secs(30),
        )
        .await,
    );
    assert!(
        acknowledged.len() >= 50,
        "{} acknowledged",
        acknowledged.len()
    );
    let phase = std::time::Instant::now();

    // Leases of the killed process run out and its jobs run again.
    all_jobs_finished(&app).await;
    let sql = app.sql().await;
    let orders: Vec<String> = sql
        .query("SELECT id::text FROM orders", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let committed: std::collections::BTreeSet<&str> = orders.iter().map(String::as_str).collect();
    for id in &acknowledged {
        assert!(
            committed.contains(id.as_str()),
            "acknowledged order {id} committed"
        );
    }
    // Every job of every committed order done, none lost, none dead: its mail (its file counted
    // below) and webhook `succeeded`, its analytics and audit entry done and gone from the queue.
    let rows = sql
        .query(
            "SELECT o.id::text,
                (SELECT string_agg(j.kind || ':' || j.status, ' ' ORDER BY j.kind) FROM jobs j
                 WHERE j.payload->>'order_id' = o.id::text OR j.payload->>'entity_id' = o.id::text),
                (SELECT count(*) FROM analytics_applied a WHERE a.order_id = o.id),
                (SELECT count(*) FROM audit_log l WHERE l.entity_id = o.id::text)
             FROM orders o",
            &[],
        )
        .await
        .unwrap();
    for r in &rows {
        let id: String = r.get(0);
        assert_eq!(
            (
                r.get::<_, Option<String>>(1),
                r.get::<_, i64>(2),
                r.get::<_, i64>(3)
            ),
            (
                Some("order_email:succeeded webhook:succeeded".to_owned()),
                1,
                1
            ),
            "order {id}: its mail, webhook, analytics and audit entry"
        );
    }
    // Nothing ran for an order that does not exist (a rolled-back checkout writes no job).
    let orphans: i64 = sql
        .query_one(
            "SELECT count(*) FROM jobs j WHERE j.payload ? 'order_id'
               AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.id::text = j.payload->>'order_id')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0);
    let mut deliveries: BTreeMap<String, usize> = BTreeMap::new();
    for d in receiver.received() {
        let event = d.json();
        let order = event["data"]["id"].as_str().unwrap().to_owned();
        assert!(
            committed.contains(order.as_str()),
            "a delivery for a committed order"
        );
        *deliveries
            .entry(event["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        deliveries.len(),
        orders.len(),
        "one event per committed order"
    );
    let duplicates: usize = deliveries.values().map(|n| n - 1).sum();
    let emails = std::fs::read_dir(&outbox).unwrap().count();
    assert_eq!(
        emails,
        orders.len(),
        "one .eml per committed order, however often it ran"
    );
    // Duplicates are harmless: the aggregates count each order once.
    let (counted, total): (i64, i64) = {
        let r = sql
            .query_one(
                "SELECT (SELECT coalesce(sum(orders), 0)::bigint FROM analytics_daily),
                        (SELECT count(*) FROM orders WHERE status <> 'cancelled')",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(counted, total);
    eprintln!(
        "crash ledger: {} orders committed ({} acknowledged), {} webhook deliveries, {duplicates} duplicates, jobs settled in {:?}",
        orders.len(),
        acknowledged.len(),
        receiver.received().len(),
        phase.elapsed()
    );
    drop(second);
    receiver.stop().await;
}

#[actix_rt::test]
async fn a_graceful_stop_gives_back_the_jobs_it_still_runs_without_spending_their_attempt() {
    let receiver = WebhookReceiver::start(Behaviour::Hang);
    let app = jobs_app()
        .configure(|s| s.webhooks.timeout_ms = 30_000)
        .spawn()
        .await;
    one_order_hooked_to(&app, &receiver.url, "STOP-1").await;
    wait_until(
        "the delivery is under way",
        Duration::from_secs(20),
        async || !receiver.received().is_empty(),
    )
    .await;
    let sql = app.sql().await;
    app.stop().await;
    let row = sql
        .query_one(
            "SELECT status, attempts, locked_by FROM jobs WHERE kind = 'webhook'",
            &[],
        )
        .await
        .unwrap();
    let (status, attempts, locked_by): (String, i32, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        status, "queued",
        "given back, not left running until its lease ends"
    );
    assert_eq!(attempts, 0, "an interrupted run is not an attempt");
    assert_eq!(locked_by, None);
    receiver.stop().await;
}

#[actix_rt::test]
async fn a_redirect_is_not_followed_and_the_delivery_is_retried() {
    let elsewhere = WebhookReceiver::start(Behaviour::Accept);
    let to: &'static str = Box::leak(elsewhere.url.clone().into_boxed_str());
    let receiver = WebhookReceiver::start(Behaviour::Redirect(to));
    let app = jobs_app().spawn().await;
    let (merchant, _) = one_order_hooked_to(&app, &receiver.url, "REDIR-1").await;
    webhook_dead(&app).await;
    let job = webhook_job(&app, &merchant).await;
    assert!(
        job["last_error"]
            .as_str()
            .unwrap()
            .contains("redirects are not followed"),
        "{job}"
    );
    assert_eq!(
        receiver.received().len(),
        3,
        "each attempt asked the merchant's URL"
    );
    assert!(
        elsewhere.received().is_empty(),
        "the redirect's target was never asked"
    );
    receiver.stop().await;
    elsewhere.stop().await;
}

/// How the instance sending the mails is interrupted.
#[derive(Clone, Copy, PartialEq)]
enum Interruption {
    /// SIGTERM: a graceful stop.
    Terminate,
    /// SIGKILL: a crash.
    Kill,
}

/// A mail's Message-ID header.
fn message_id(mail: &crate::receivers::Mail) -> String {
    mail.data
        .lines()
        .find_map(|line| line.strip_prefix("Message-ID: "))
        .unwrap_or_else(|| panic!("a Message-ID in {}", mail.data))
        .trim()
        .to_owned()
}

/// What a run of mails through a slow relay came to when its instance was interrupted after the
/// relay had taken three of them, and another instance was started.
struct Interrupted {
    /// Per customer, the Message-ID of each mail the relay took, in order.
    mails: BTreeMap<String, Vec<String>>,
    /// Per customer, the Message-ID their mail's job gives it.
    expected: BTreeMap<String, String>,
    /// The Message-IDs the relay had taken whose job was not recorded done when the first
    /// instance was gone: the mails in flight.
    in_flight: std::collections::BTreeSet<String>,
    /// How many the relay had taken by then.
    before: usize,
}

/// 24 orders, each a customer of its own, their mails waiting; an instance of its own (a real
/// process) sends them through a relay that takes 0.25 s to accept each message; after the
/// relay has taken the third it is interrupted, and another instance starts and sends the rest.
async fn mails_interrupted_by(interruption: Interruption) -> Interrupted {
    let sink = SmtpSink::answering_after(Duration::from_millis(250)).await;
    // The in-process instance sets up and reads; it dispatches nothing.
    let app = TestApp::builder()
        .configure(|s| s.jobs.enabled = false)
        .spawn()
        .await;
    let merchant = app.create_merchant("Relay Shop").await;
    let product = app.create_product(&merchant, "RELAY-1", 100, 100).await;
    for n in 0..24 {
        let body = json!({"customer_email": format!("customer{n}@example.com"),
            "items": [{"product_id": product["id"], "quantity": 1}]});
        let reply = app.checkout(&merchant.id, &body, None).await;
        assert_eq!(reply.status, 201);
    }
    let sql = app.sql().await;
    let expected: BTreeMap<String, String> = sql
        .query(
            "SELECT '<' || o.customer_email || '>', '<' || j.id || '@rampart>' FROM jobs j
             JOIN orders o ON o.id::text = j.payload->>'order_id' WHERE j.kind = 'order_email'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(expected.len(), 24);
    let log = std::env::temp_dir().join(format!("rampart-relay-{}.log", uuid::Uuid::new_v4()));
    let env = [
        ("RAMPART__JOBS__ENABLED", "true"),
        ("RAMPART__JOBS__POLL_INTERVAL_MS", "100"),
        ("RAMPART__JOBS__LEASE_SECS", "2"),
        ("RAMPART__JOBS__BACKOFF_BASE_MS", "50"),
        ("RAMPART__JOBS__BACKOFF_MAX_MS", "300"),
        ("RAMPART__EMAIL__SMTP_URL", sink.url.as_str()),
    ];
    let mut first = OtherProcess::logging_to(&app, &env, &log).await;
    wait_until(
        "the relay has taken three mails",
        Duration::from_secs(30),
        async || sink.mails().len() >= 3,
    )
    .await;
    match interruption {
        Interruption::Terminate => first.terminate().await,
        Interruption::Kill => first.kill(),
    }
    // Everything the instance wrote before it went is read.
    wait_until(
        "the relay's connections from the first instance are closed",
        Duration::from_secs(30),
        async || sink.connections() == 0,
    )
    .await;
    let taken: std::collections::BTreeSet<String> = sink.mails().iter().map(message_id).collect();
    let recorded: std::collections::BTreeSet<String> = sql
        .query(
            "SELECT '<' || id || '@rampart>' FROM jobs
             WHERE kind = 'order_email' AND status = 'succeeded'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let in_flight = taken.difference(&recorded).cloned().collect();
    let before = sink.mails().len();
    if interruption == Interruption::Terminate {
        // What it had not sent it handed back, attempt unspent, for the next start at once.
        let held = sql
            .query(
                "SELECT status, attempts FROM jobs
                 WHERE kind = 'order_email' AND status <> 'succeeded'",
                &[],
            )
            .await
            .unwrap();
        for row in &held {
            let (status, attempts): (String, i32) = (row.get(0), row.get(1));
            assert_eq!((status.as_str(), attempts), ("queued", 0), "handed back");
        }
    }

    let second = OtherProcess::logging_to(&app, &env, &log).await;
    wait_until("every mail job done", Duration::from_secs(60), async || {
        let open: i64 = sql
            .query_one(
                "SELECT count(*) FROM jobs
                 WHERE kind = 'order_email' AND status NOT IN ('succeeded', 'dead')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        open == 0
    })
    .await;
    drop(second);
    let mut mails: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for mail in sink.mails() {
        assert_eq!(mail.to.len(), 1, "{mail:?}");
        mails
            .entry(mail.to[0].clone())
            .or_default()
            .push(message_id(&mail));
    }
    Interrupted {
        mails,
        expected,
        in_flight,
        before,
    }
}

/// API.md, Background work: an instance stopping on SIGTERM finishes or hands back what it
/// started, and a mail the mail server accepted is not sent again.
#[actix_rt::test]
async fn a_graceful_restart_in_the_middle_of_the_mails_sends_each_customer_exactly_one() {
    let run = mails_interrupted_by(Interruption::Terminate).await;
    assert!(
        run.before < 24,
        "the second instance had mails left to send ({} sent before)",
        run.before
    );
    let once: BTreeMap<String, Vec<String>> = run
        .expected
        .iter()
        .map(|(customer, id)| (customer.clone(), vec![id.clone()]))
        .collect();
    assert_eq!(run.mails, once, "each customer's one mail, once");
}

/// API.md, Background work: after a crash at most the mails in flight are sent again, each with
/// the Message-ID of the first.
#[actix_rt::test]
async fn after_a_crash_in_the_middle_of_the_mails_only_those_in_flight_repeat_with_their_message_id(
) {
    let run = mails_interrupted_by(Interruption::Kill).await;
    // At most one mail in flight per run: the email queue runs two at once.
    assert!(
        run.in_flight.len() <= 2,
        "mails taken by the relay but not recorded when the instance died: {:?}",
        run.in_flight
    );
    for (customer, id) in &run.expected {
        let got = run.mails.get(customer).cloned().unwrap_or_default();
        assert!(!got.is_empty(), "{customer} got no mail");
        assert!(
            got.iter().all(|m| m == id),
            "{customer}'s mails carry its job's Message-ID {id}: {got:?}"
        );
        if got.len() > 1 {
            assert!(
                got.len() == 2 && run.in_flight.contains(id),
                "only a mail in flight is sent again, once: {customer} got {got:?}"
            );
        }
    }
    assert_eq!(run.mails.len(), 24, "no mail to anyone else");
}
