//! The edge of the contract: credentials before the body, malformed before invalid, text
//! PostgreSQL cannot store, strong `If-Match` and 428, bounded checkout bodies.

use crate::support::TestApp;
use awc::http::Method;
use serde_json::json;

#[actix_rt::test]
async fn a_bad_or_missing_key_is_401_with_www_authenticate_whatever_the_body() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Gate").await;
    let p = app.create_product(&m, "G-1", 100, 1).await;
    let id = p["id"].as_str().expect("id");
    let bodies: [(&str, &[u8]); 3] = [
        ("application/json", b"{\"sku\": "),
        ("text/plain", b"not json at all"),
        ("application/json", b"{\"unknown\": 1}"),
    ];
    for (path, method) in [
        ("/api/v1/products".to_owned(), Method::POST),
        (format!("/api/v1/products/{id}"), Method::PATCH),
        (format!("/api/v1/products/{id}/stock"), Method::POST),
        ("/api/v1/admin/merchants".to_owned(), Method::POST),
    ] {
        for key in [None, Some("rk_live_not-a-key")] {
            for (content_type, body) in bodies {
                let mut req = app
                    .client
                    .request(method.clone(), app.url(&path))
                    .content_type(content_type);
                if let Some(key) = key {
                    req = req.bearer_auth(key);
                }
                let reply = app.send(req, Some(body)).await;
                reply.problem(401);
                assert_eq!(
                    reply.header("www-authenticate"),
                    Some("Bearer"),
                    "{method} {path}"
                );
            }
        }
    }
    let reply = app
        .send(
            app.client
                .post(app.url("/api/v1/admin/merchants"))
                .bearer_auth(&m.api_key)
                .content_type("application/json"),
            Some(b"{"),
        )
        .await;
    reply.problem(401);
}

#[actix_rt::test]
async fn syntactically_invalid_json_is_400_even_when_it_names_unknown_or_misses_fields() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Syntax").await;
    for body in [
        r#"{"bogus": 1, "sku": "A"#,
        r#"{"sku": 5, "name": "#,
        r#"{"name": "x"} trailing"#,
        r#"{"bogus": }"#,
    ] {
        let reply = app
            .send(
                app.client
                    .post(app.url("/api/v1/products"))
                    .bearer_auth(&m.api_key)
                    .content_type("application/json"),
                Some(body.as_bytes()),
            )
            .await;
        assert_eq!(
            reply.problem(400)["type"],
            "/problems/bad-request",
            "{body}"
        );
    }
}

#[actix_rt::test]
async fn text_postgresql_cannot_store_is_a_4xx_never_a_500() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Nul").await;
    app.create_product(&m, "N-1", 100, 1).await;
    for path in [
        "/api/v1/products?q=%00".to_owned(),
        "/api/v1/products?category=a%00b".to_owned(),
        format!("/api/v1/stores/{}/products?q=%00", m.id),
        format!("/api/v1/stores/{}/products?category=%00", m.id),
    ] {
        app.get_as(&m.api_key, &path).await.problem(400);
    }
    for body in [
        json!({"sku": "N-2", "name": "a\u{0}b", "price_cents": 1, "currency": "EUR"}),
        json!({"sku": "N-3", "name": "ok", "description": "\u{0}", "price_cents": 1, "currency": "EUR"}),
        json!({"sku": "N\u{0}4", "name": "ok", "price_cents": 1, "currency": "EUR"}),
    ] {
        let reply = app
            .post_json("/api/v1/products", Some(&m.api_key), &body)
            .await;
        reply.problem(422);
    }
    let checkout = app
        .checkout(
            &m.id,
            &json!({"customer_email": "a@b.co", "customer_name": "x\u{0}y", "items": [{"product_id": uuid::Uuid::now_v7(), "quantity": 1}]}),
            None,
        )
        .await;
    checkout.problem(422);
}

#[actix_rt::test]
async fn if_match_compares_strongly_matches_any_tag_of_a_list_and_stock_needs_it() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Tags").await;
    let p = app.create_product(&m, "T-1", 100, 5).await;
    let id = p["id"].as_str().expect("id");
    let path = app.url(&format!("/api/v1/products/{id}"));
    let patch = |tag: Option<&str>| {
        let mut req = app
            .client
            .request(Method::PATCH, &path)
            .bearer_auth(&m.api_key)
            .content_type("application/json");
        if let Some(tag) = tag {
            req = req.insert_header(("If-Match", tag.to_owned()));
        }
        req
    };
    // The current tag is "v1": its weak form never matches.
    app.send(patch(Some(r#"W/"v1""#)), Some(br#"{"name": "weak"}"#))
        .await
        .problem(412);
    let listed = app
        .send(
            patch(Some(r#""v7", W/"v1", "v1""#)),
            Some(br#"{"name": "listed"}"#),
        )
        .await;
    assert_eq!(
        listed.status, 200,
        "a list matches when any strong tag does"
    );
    assert_eq!(listed.json()["version"], 2);
    let any = app
        .send(patch(Some("*")), Some(br#"{"name": "any"}"#))
        .await;
    assert_eq!(any.status, 200, "* matches an existing product");
    let missing = app.url(&format!("/api/v1/products/{}", uuid::Uuid::now_v7()));
    let reply = app
        .send(
            app.client
                .request(Method::PATCH, &missing)
                .bearer_auth(&m.api_key)
                .content_type("application/json")
                .insert_header(("If-Match", "*")),
            Some(br#"{"name": "ghost"}"#),
        )
        .await;
    reply.problem(404);

    // Stock written blind would erase the sales made since the client read it.
    let blind = app.send(patch(None), Some(br#"{"stock": 50}"#)).await;
    assert_eq!(
        blind.problem(428)["type"],
        "/problems/precondition-required"
    );
    let tag = any.header("etag").expect("etag").to_owned();
    let set = app.send(patch(Some(&tag)), Some(br#"{"stock": 50}"#)).await;
    assert_eq!(set.status, 200);
    assert_eq!(set.json()["stock"], 50);
    // Other fields need no If-Match.
    assert_eq!(
        app.send(patch(None), Some(br#"{"name": "free"}"#))
            .await
            .status,
        200
    );
}

#[actix_rt::test]
async fn a_checkout_of_more_than_fifty_items_is_refused_with_one_error_however_long() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Huge").await;
    let p = app.create_product(&m, "H-1", 100, 5).await;
    for (count, quantity) in [(51, 1), (3000, 0), (3000, 1)] {
        let items: Vec<_> = (0..count)
            .map(|_| json!({"product_id": p["id"], "quantity": quantity}))
            .collect();
        let body = json!({"customer_email": "a@b.co", "items": items});
        let problem = app.checkout(&m.id, &body, None).await.problem(422);
        let errors = problem["errors"].as_array().expect("errors");
        assert_eq!(errors.len(), 1, "{count} items: {problem}");
        assert_eq!(errors[0]["field"], "items");
    }
}

#[actix_rt::test]
async fn storefront_paths_are_routed_exactly_with_405_and_allow_for_other_methods() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Routes").await;
    let p = app.create_product(&m, "RT-1", 100, 1).await;
    let product = m.store_product(&p);
    assert_eq!(app.get(&product).await.status, 200);
    let put = app
        .send(app.client.put(app.url(&product)), Some(b"{}"))
        .await;
    put.problem(405);
    assert_eq!(put.header("allow"), Some("GET"));
    let get_orders = app.get(&format!("/api/v1/stores/{}/orders", m.id)).await;
    get_orders.problem(405);
    assert_eq!(get_orders.header("allow"), Some("POST"));
    for path in [
        format!("{product}/extra"),
        format!("{product}/"),
        format!("/api/v1/stores/{}", m.id),
        format!("/api/v1/stores/{}/nothing", m.id),
        "/api/v1/stores".to_owned(),
        "/api/v1/storesx".to_owned(),
    ] {
        app.get(&path).await.problem(404);
    }
    let text = app.metrics().await;
    assert!(
        text.contains(r#"route="/api/v1/stores/{merchant_id}/products/{id}",status="200""#),
        "{text}"
    );
}
