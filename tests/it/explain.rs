//! Every list query the API runs uses an index, on a table large enough that the planner would
//! rather scan it whole if it could.

use crate::support::TestApp;
use rampart::domain::listing::{KeyValue, Page, Position};
use rampart::domain::order::{OrderFilter, OrderStatus};
use rampart::domain::product::{ProductFilter, Sort};
use rampart::store::orders::{self, OrderQuery};
use rampart::store::paging::{as_refs, Param};
use rampart::store::products::{self, ProductQuery};

#[actix_rt::test]
async fn every_list_query_uses_an_index() {
    let app = TestApp::spawn().await;
    let a = app.create_merchant("Big").await;
    let mut merchants = vec![a.id.clone()];
    for i in 0..7 {
        merchants.push(app.create_merchant(&format!("Other {i}")).await.id);
    }
    let sql = app.sql().await;
    // A shared multi-tenant table: 40,000 products over eight merchants, a tenth archived;
    // 24,000 orders.
    for m in &merchants {
        sql.execute(
            "INSERT INTO products (id, merchant_id, sku, name, description, price_cents, currency, stock, category, status, created_at)
             SELECT gen_random_uuid(), $1::text::uuid, 'S' || g, 'Name ' || md5(g::text), 'about ' || md5((g * 7)::text), (g * 37) % 100000, 'EUR', 5,
                    'cat' || (g % 50), CASE WHEN g % 10 = 0 THEN 'archived' ELSE 'active' END, now() - g * interval '1 second'
             FROM generate_series(1, 5000) g",
            &[m],
        )
        .await
        .expect("seed products");
        sql.execute(
            "INSERT INTO orders (id, merchant_id, number, status, customer_email, total_cents, currency, created_at)
             SELECT gen_random_uuid(), $1::text::uuid, g, (ARRAY['pending','paid','shipped','delivered','cancelled'])[1 + g % 5], 'c@example.com', 100, 'EUR',
                    now() - g * interval '1 minute'
             FROM generate_series(1, 3000) g",
            &[m],
        )
        .await
        .expect("seed orders");
    }
    for table in ["products", "orders"] {
        sql.batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await
            .expect("vacuum");
    }
    let merchant_id: uuid::Uuid = a.id.parse().expect("uuid");

    let sorts = [
        Sort::CreatedDesc,
        Sort::CreatedAsc,
        Sort::PriceAsc,
        Sort::PriceDesc,
        Sort::NameAsc,
        Sort::NameDesc,
    ];
    let filters = [
        ProductFilter::default(),
        ProductFilter {
            category: Some("cat7".into()),
            ..Default::default()
        },
        ProductFilter {
            q: Some("about".into()),
            ..Default::default()
        },
        ProductFilter {
            min_price: Some(100),
            max_price: Some(5000),
            ..Default::default()
        },
    ];
    let mut queries: Vec<(String, Vec<Param>)> = Vec::new();
    for storefront in [true, false] {
        for sort in sorts {
            for filter in &filters {
                let key = match sort {
                    Sort::CreatedAsc | Sort::CreatedDesc => KeyValue::Time(chrono::Utc::now()),
                    Sort::PriceAsc | Sort::PriceDesc => KeyValue::Int(500),
                    Sort::NameAsc | Sort::NameDesc => KeyValue::Text("Name 8".into()),
                };
                for page in [
                    Page::Keyset {
                        limit: 20,
                        after: None,
                    },
                    Page::Keyset {
                        limit: 20,
                        after: Some(Position {
                            key: key.clone(),
                            id: uuid::Uuid::now_v7(),
                        }),
                    },
                    Page::Offset {
                        page: 3,
                        per_page: 20,
                        count_up_to: 10_000,
                    },
                ] {
                    let q = ProductQuery {
                        merchant_id,
                        storefront,
                        filter: filter.clone(),
                        sort,
                        page,
                    };
                    let (main, params, count) = products::list_sql(&q).expect("sql");
                    queries.push((main, params));
                    if let Some(count) = count {
                        queries.push(count);
                    }
                }
            }
        }
    }
    for filter in [
        OrderFilter::default(),
        OrderFilter {
            status: Some(OrderStatus::Paid),
            ..Default::default()
        },
        OrderFilter {
            from: Some(chrono::Utc::now() - chrono::Duration::days(2)),
            until: Some(chrono::Utc::now()),
            ..Default::default()
        },
    ] {
        for page in [
            Page::Keyset {
                limit: 20,
                after: None,
            },
            Page::Offset {
                page: 2,
                per_page: 20,
                count_up_to: 10_000,
            },
        ] {
            let (main, params, count) = orders::list_sql(&OrderQuery {
                merchant_id,
                filter: filter.clone(),
                page,
            })
            .expect("sql");
            queries.push((main, params));
            if let Some(count) = count {
                queries.push(count);
            }
        }
    }

    assert!(queries.len() > 150);
    for (query, params) in &queries {
        let plan: Vec<String> = sql
            .query(&format!("EXPLAIN {query}"), &as_refs(params))
            .await
            .expect("explain")
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        let plan = plan.join("\n");
        assert!(
            !plan.contains("Seq Scan on products") && !plan.contains("Seq Scan on orders"),
            "{query}\n{plan}"
        );
        assert!(plan.contains("Index"), "{query}\n{plan}");
    }
}
