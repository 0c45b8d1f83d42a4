//! Pagination: cursors walk every row exactly once even while rows are inserted; cursors cannot
//! be tampered with or carried elsewhere; offset pages count.

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
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
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
        json!({"data": [], "page": 1, "per_page": 10, "total": 0})
    );
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
