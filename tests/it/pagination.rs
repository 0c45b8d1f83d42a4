//! Pagination: cursors walk every row exactly once even while rows are inserted; cursors cannot
//! be tampered with or carried elsewhere; offset pages count, within a window
//! (`pagination.max_offset`), and their `total` only up to `pagination.max_total`.

use crate::support::TestApp;
use serde_json::{json, Value};
use std::collections::HashSet;

async fn walk(
    app: &TestApp,
    first: &str,
    key: Option<&str>,
    mut between: impl AsyncFnMut(usize),
) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut url = first.to_owned();
    let mut pages = 0;
    loop {
        let reply = match key {
            Some(k) => app.get_as(k, &url).await,
            None => app.get(&url).await,
        };
        reply.assert_status(200);
        let body = reply.json();
        rows.extend(body["data"].as_array().expect("data").iter().cloned());
        pages += 1;
        between(pages).await;
        match body["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(body["has_more"], true);
                let sep = if first.contains('?') { '&' } else { '?' };
                url = format!("{first}{sep}cursor={c}");
            }
            None => {
                assert_eq!(body["has_more"], false);
                return rows;
            }
        }
    }
}

#[actix_rt::test]
async fn walking_cursors_while_others_insert_returns_every_existing_row_once_in_order() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Walk").await;
    for i in 0..45 {
        app.create_product(&m, &format!("W{i:02}"), 100 + (i * 37) % 11, 1)
            .await;
    }
    let before: HashSet<String> = (0..45).map(|i| format!("W{i:02}")).collect();
    for sort in [
        "-created_at",
        "created_at",
        "price",
        "-price",
        "name",
        "-name",
    ] {
        let first = format!("/api/v1/stores/{}/products?limit=7&sort={sort}", m.id);
        let mut inserted = 0;
        let rows = walk(&app, &first, None, async |page| {
            let sku = format!("NEW-{sort}-{page}");
            app.create_product(&m, &sku, 105, 1).await;
            inserted += 1;
        })
        .await;
        let skus: Vec<String> = rows
            .iter()
            .map(|r| r["sku"].as_str().expect("sku").to_owned())
            .collect();
        let old: Vec<&String> = skus.iter().filter(|s| before.contains(*s)).collect();
        assert_eq!(old.len(), 45, "{sort}: every existing row once");
        assert_eq!(
            old.iter().collect::<HashSet<_>>().len(),
            45,
            "{sort}: no duplicates"
        );
        let unique: HashSet<&String> = skus.iter().collect();
        assert_eq!(unique.len(), skus.len(), "{sort}: no row twice");
        // In order: the listed keys never go backwards.
        let key = |r: &Value| -> (Option<i64>, String, String) {
            let id = r["id"].as_str().expect("id").to_owned();
            match sort.trim_start_matches('-') {
                "price" => (r["price_cents"].as_i64(), String::new(), id),
                "name" => (None, r["name"].as_str().expect("name").to_owned(), id),
                _ => {
                    let t =
                        chrono::DateTime::parse_from_rfc3339(r["created_at"].as_str().expect("t"))
                            .expect("rfc3339");
                    (t.timestamp_micros().into(), String::new(), id)
                }
            }
        };
        let keys: Vec<_> = rows.iter().map(key).collect();
        for w in keys.windows(2) {
            assert_eq!(w[0] <= w[1], !sort.starts_with('-'), "{sort}: {w:?}");
        }
        assert!(inserted > 0);
    }
}

#[actix_rt::test]
async fn tampered_foreign_or_mismatched_cursors_are_400() {
    let app = TestApp::spawn().await;
    let a = app.create_merchant("A").await;
    let b = app.create_merchant("B").await;
    for i in 0..3 {
        app.create_product(&a, &format!("A{i}"), 100, 1).await;
        app.create_product(&b, &format!("B{i}"), 100, 1).await;
    }
    let page = app
        .get(&format!("/api/v1/stores/{}/products?limit=1", a.id))
        .await
        .json();
    let cursor = page["next_cursor"].as_str().expect("cursor").to_owned();
    let mut tampered = cursor.clone().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("utf8");
    for url in [
        format!("/api/v1/stores/{}/products?limit=1&cursor={tampered}", a.id),
        format!("/api/v1/stores/{}/products?limit=1&cursor={cursor}", b.id),
        format!(
            "/api/v1/stores/{}/products?limit=1&sort=price&cursor={cursor}",
            a.id
        ),
        format!(
            "/api/v1/stores/{}/products?limit=1&category=x&cursor={cursor}",
            a.id
        ),
        format!(
            "/api/v1/stores/{}/products?limit=1&cursor=not-a-cursor",
            a.id
        ),
    ] {
        assert_eq!(
            app.get(&url).await.problem(400)["errors"][0]["field"],
            "cursor",
            "{url}"
        );
    }
    // A storefront cursor does not open the merchant's catalog either.
    app.get_as(
        &a.api_key,
        &format!("/api/v1/products?limit=1&cursor={cursor}"),
    )
    .await
    .problem(400);
}

#[actix_rt::test]
async fn offset_pages_carry_totals_and_the_two_styles_cannot_mix() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Offset").await;
    for i in 0..5 {
        app.create_product(&m, &format!("O{i}"), 100 + i, 1).await;
    }
    let page = app
        .get_as(&m.api_key, "/api/v1/products?page=2&per_page=2&sort=price")
        .await
        .json();
    assert_eq!(page["total"], 5);
    assert_eq!(page["total_exact"], true);
    assert_eq!(page["page"], 2);
    assert_eq!(page["per_page"], 2);
    let skus: Vec<&str> = page["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|p| p["sku"].as_str().expect("sku"))
        .collect();
    assert_eq!(skus, vec!["O2", "O3"]);
    app.get_as(&m.api_key, "/api/v1/products?page=1&limit=2")
        .await
        .problem(400);
    app.get_as(&m.api_key, "/api/v1/products?limit=0")
        .await
        .problem(400);
    app.get_as(&m.api_key, "/api/v1/products?limit=101")
        .await
        .problem(400);
    app.get_as(&m.api_key, "/api/v1/products?sort=stock")
        .await
        .problem(400);
    let orders = app
        .get_as(&m.api_key, "/api/v1/orders?page=1&per_page=10")
        .await
        .json();
    assert_eq!(
        orders,
        json!({"data": [], "page": 1, "per_page": 10, "total": 0, "total_exact": true})
    );
}

/// Asserts the 400 of an offset page past the window: a problem on `page` naming cursors.
fn past_the_window(reply: &crate::support::Reply, url: &str) {
    let problem = reply.problem(400);
    assert_eq!(problem["errors"][0]["field"], "page", "{url}: {problem}");
    let detail = problem["detail"].as_str().expect("detail");
    assert!(
        detail.contains("cursor") && detail.contains("10000"),
        "{url}: {detail}"
    );
}

#[actix_rt::test]
async fn offset_pages_stop_at_the_window_on_every_list_and_name_cursors_as_the_way_on() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Window").await;
    for i in 0..3 {
        app.create_product(&m, &format!("WIN{i}"), 100 + i, 1).await;
    }
    let lists = [
        (format!("/api/v1/stores/{}/products", m.id), None),
        ("/api/v1/products".to_owned(), Some(m.api_key.as_str())),
        ("/api/v1/orders".to_owned(), Some(m.api_key.as_str())),
        ("/api/v1/audit".to_owned(), Some(m.api_key.as_str())),
    ];
    let app = &app;
    for (list, key) in &lists {
        let get = |query: String| {
            let url = format!("{list}?{query}");
            async move {
                let reply = match key {
                    Some(k) => app.get_as(k, &url).await,
                    None => app.get(&url).await,
                };
                (url, reply)
            }
        };
        // The last pages inside the default window (10,000 rows): their first row is 9,999 or
        // 9,980 or 9,900 deep.
        for query in [
            "page=10000&per_page=1",
            "page=500&per_page=20",
            "page=100&per_page=100",
        ] {
            let (url, reply) = get(query.to_owned()).await;
            assert_eq!(
                reply.status,
                200,
                "{url}: {}",
                String::from_utf8_lossy(&reply.body)
            );
            let body = reply.json();
            assert_eq!(body["data"], json!([]), "{url}");
            assert_eq!(body["total_exact"], true, "{url}");
        }
        // One row further, and page numbers whose offset overflows 64 bits, or the page itself.
        for query in [
            "page=10001&per_page=1",
            "page=501&per_page=20",
            "page=101&per_page=100",
            "page=1000001",
            "page=9999999999999&per_page=100",
            "page=9223372036854775807&per_page=100",
            "page=9223372036854775808",
            "page=18446744073709551615&per_page=100",
            "page=99999999999999999999999999999",
        ] {
            let (url, reply) = get(query.to_owned()).await;
            past_the_window(&reply, &url);
        }
        // Not a page number at all: still a 400 on `page`.
        for query in ["page=0", "page=-1", "page=abc"] {
            let (url, reply) = get(query.to_owned()).await;
            assert_eq!(reply.problem(400)["errors"][0]["field"], "page", "{url}");
        }
    }
}

#[actix_rt::test]
async fn a_total_past_max_total_is_that_number_and_not_exact() {
    let app = TestApp::builder()
        .configure(|s| {
            s.pagination.max_total = 5;
            s.pagination.max_offset = 6;
        })
        .spawn()
        .await;
    let m = app.create_merchant("Counted").await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let p = app.create_product(&m, &format!("C{i}"), 100 + i, 10).await;
        ids.push(p["id"].as_str().expect("id").to_owned());
    }
    let store = format!("/api/v1/stores/{}/products", m.id);
    let merchant = |q: &str| format!("/api/v1/products?{q}");
    let storefront = |q: &str| format!("{store}?{q}");
    // 8 rows, counted up to 5.
    for (url, key) in [
        (merchant("page=1&per_page=2&sort=price"), Some(&m.api_key)),
        (storefront("page=1&per_page=2&sort=price"), None),
    ] {
        let reply = match key {
            Some(k) => app.get_as(k, &url).await,
            None => app.get(&url).await,
        };
        let body = reply.json();
        assert_eq!(body["total"], 5, "{url}: {body}");
        assert_eq!(body["total_exact"], false, "{url}: {body}");
        assert_eq!(body["data"].as_array().expect("data").len(), 2, "{url}");
    }
    // The window is 6 rows deep: rows 4 and 5 are the last page of two; page 4 starts at row 6.
    let last = app
        .get(&storefront("page=3&per_page=2&sort=price"))
        .await
        .json();
    let skus: Vec<&str> = last["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|p| p["sku"].as_str().expect("sku"))
        .collect();
    assert_eq!(skus, vec!["C4", "C5"]);
    let url = storefront("page=4&per_page=2&sort=price");
    let problem = app.get(&url).await.problem(400);
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("cursor")),
        "{problem}"
    );
    // 3 rows match (prices 105 to 107): exact; and exactly 5 is exact too.
    for (q, total) in [("min_price=105", 3), ("max_price=104", 5)] {
        for url in [
            merchant(&format!("page=1&per_page=2&{q}")),
            storefront(&format!("page=1&per_page=2&{q}")),
        ] {
            let body = if url.starts_with("/api/v1/stores") {
                app.get(&url).await.json()
            } else {
                app.get_as(&m.api_key, &url).await.json()
            };
            assert_eq!(body["total"], total, "{url}: {body}");
            assert_eq!(body["total_exact"], true, "{url}: {body}");
        }
    }
    // Orders: 6 counted up to 5, then the 3 of them that are paid (a filter) exactly.
    let mut orders = Vec::new();
    for id in ids.iter().take(6) {
        let reply = app
            .checkout(
                &m.id,
                &json!({"customer_email": "c@example.com", "items": [{"product_id": id, "quantity": 1}]}),
                None,
            )
            .await;
        reply.assert_status(201);
        orders.push(reply.json()["id"].as_str().expect("id").to_owned());
    }
    let body = app
        .get_as(&m.api_key, "/api/v1/orders?page=1&per_page=2")
        .await
        .json();
    assert_eq!(
        (body["total"].clone(), body["total_exact"].clone()),
        (json!(5), json!(false)),
        "{body}"
    );
    for id in orders.iter().take(3) {
        let reply = app
            .post_json(
                &format!("/api/v1/orders/{id}/status"),
                Some(&m.api_key),
                &json!({"status": "paid"}),
            )
            .await;
        reply.assert_status(200);
    }
    let body = app
        .get_as(&m.api_key, "/api/v1/orders?page=1&per_page=2&status=paid")
        .await
        .json();
    assert_eq!(
        (body["total"].clone(), body["total_exact"].clone()),
        (json!(3), json!(true)),
        "{body}"
    );
}

/// Every offset page schema in the OpenAPI document carries `total_exact`, required.
fn offset_schemas(value: &Value, found: &mut Vec<Value>) {
    match value {
        Value::Object(map) => {
            if map
                .get("properties")
                .is_some_and(|p| p.get("per_page").is_some())
            {
                found.push(value.clone());
            }
            map.values().for_each(|v| offset_schemas(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| offset_schemas(v, found)),
        _ => {}
    }
}

#[actix_rt::test]
async fn the_openapi_offset_pages_carry_total_exact() {
    let app = TestApp::spawn().await;
    let doc = app.get("/api-docs/openapi.json").await.json();
    let mut found = Vec::new();
    offset_schemas(&doc, &mut found);
    assert!(found.len() >= 3, "{found:?}");
    for schema in found {
        assert_eq!(
            schema["properties"]["total_exact"]["type"], "boolean",
            "{schema}"
        );
        let required = schema["required"].as_array().expect("required");
        assert!(required.contains(&json!("total_exact")), "{schema}");
    }
}

/// Prepared statements of the (single) pooled session: in PostgreSQL and in the process.
struct PreparedStatements;
impl rampart_actors::DbCommand for PreparedStatements {
    type Output = (i64, usize);
    async fn run(
        self,
        conn: &mut rampart_actors::Conn,
    ) -> Result<(i64, usize), rampart_actors::DbError> {
        let server: i64 = conn
            .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
            .await?
            .get(0);
        Ok((server, conn.statement_cache.size()))
    }
}

#[actix_rt::test]
async fn ten_thousand_distinct_pages_leave_the_prepared_statements_per_connection_bounded() {
    use rampart::domain::listing::Page;
    use rampart::domain::product::{ProductFilter, Sort};
    use rampart::store::products::{List, ProductQuery};
    let app = TestApp::builder()
        .configure(|s| s.database.max_connections = 1)
        .spawn()
        .await;
    let m = app.create_merchant("Pages").await;
    app.create_product(&m, "P-1", 100, 1).await;
    let merchant_id: uuid::Uuid = m.id.parse().expect("uuid");
    let query = |page: Page| ProductQuery {
        merchant_id,
        storefront: false,
        filter: ProductFilter::default(),
        sort: Sort::CreatedDesc,
        page,
    };
    for batch in 0..100i64 {
        let lists = (0..100i64).map(|i| {
            let n = batch * 100 + i;
            let page = if n % 2 == 0 {
                Page::Offset {
                    page: 1 + n / 2,
                    per_page: 1 + n % 100,
                    count_up_to: 10_000,
                }
            } else {
                Page::Keyset {
                    limit: 1 + n % 100,
                    after: None,
                }
            };
            app.db.run(List(query(page)))
        });
        for result in futures_util::future::join_all(lists).await {
            result.expect("list");
        }
    }
    let (server, process) = app.db.run(PreparedStatements).await.expect("count");
    assert!(server <= 20, "{server} prepared statements in the backend");
    assert!(process <= 20, "{process} statements cached in the process");
}
