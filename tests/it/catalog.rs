//! The merchant's catalog: validation, ETags, conditional updates, archive, stock.

use crate::support::TestApp;
use awc::http::Method;
use serde_json::json;

#[actix_rt::test]
async fn products_are_created_read_with_etags_and_updated_only_when_if_match_holds() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Catalog").await;
    let created = app
        .post_json("/api/v1/products", Some(&m.api_key), &json!({"sku": "SKU-1", "name": "Lamp", "description": "warm light", "price_cents": 4999, "currency": "EUR", "stock": 3, "category": "home"}))
        .await;
    assert_eq!(created.status, 201);
    let product = created.json();
    let id = product["id"].as_str().expect("id");
    assert_eq!(
        created.header("location"),
        Some(format!("/api/v1/products/{id}").as_str())
    );
    assert_eq!(product["status"], "active");
    assert_eq!(product["version"], 1);
    for field in [
        "id",
        "sku",
        "name",
        "description",
        "price_cents",
        "currency",
        "stock",
        "category",
        "status",
        "version",
        "created_at",
        "updated_at",
    ] {
        assert!(product.get(field).is_some(), "{field}");
    }

    let read = app
        .get_as(&m.api_key, &format!("/api/v1/products/{id}"))
        .await;
    let etag = read.header("etag").expect("etag").to_owned();
    let fresh = app
        .send(
            app.client
                .get(app.url(&format!("/api/v1/products/{id}")))
                .bearer_auth(&m.api_key)
                .insert_header(("If-None-Match", etag.as_str())),
            None,
        )
        .await;
    assert_eq!(fresh.status, 304);

    let path = app.url(&format!("/api/v1/products/{id}"));
    let patch = |tag: &str| {
        app.client
            .request(Method::PATCH, &path)
            .bearer_auth(&m.api_key)
            .content_type("application/json")
            .insert_header(("If-Match", tag.to_owned()))
    };
    let updated = app
        .send(
            patch(&etag),
            Some(br#"{"price_cents": 3999, "description": null}"#),
        )
        .await;
    assert_eq!(updated.status, 200);
    let body = updated.json();
    assert_eq!(body["price_cents"], 3999);
    assert_eq!(body["description"], serde_json::Value::Null);
    assert_eq!(body["version"], 2);
    assert_ne!(updated.header("etag"), Some(etag.as_str()));
    // The old tag is stale now.
    app.send(patch(&etag), Some(br#"{"name": "Lamp 2"}"#))
        .await
        .problem(412);

    let dup = app
        .post_json(
            "/api/v1/products",
            Some(&m.api_key),
            &json!({"sku": "SKU-1", "name": "Other", "price_cents": 1, "currency": "EUR"}),
        )
        .await;
    assert_eq!(dup.problem(409)["type"], "/problems/duplicate-sku");
}

#[actix_rt::test]
async fn stock_deltas_never_take_stock_below_zero_and_bump_the_version() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Stock").await;
    let p = app.create_product(&m, "S", 100, 2).await;
    let id = p["id"].as_str().expect("id");
    let up = app
        .post_json(
            &format!("/api/v1/products/{id}/stock"),
            Some(&m.api_key),
            &json!({"delta": 3}),
        )
        .await;
    assert_eq!(up.status, 200);
    assert_eq!(up.json()["stock"], 5);
    assert_eq!(up.json()["version"], 2);
    let too_far = app
        .post_json(
            &format!("/api/v1/products/{id}/stock"),
            Some(&m.api_key),
            &json!({"delta": -6}),
        )
        .await;
    assert_eq!(too_far.problem(409)["type"], "/problems/insufficient-stock");
    let read = app
        .get_as(&m.api_key, &format!("/api/v1/products/{id}"))
        .await
        .json();
    assert_eq!(read["stock"], 5);
}

#[actix_rt::test]
async fn delete_archives_so_the_storefront_hides_it_and_the_merchant_still_sees_it() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("Archive").await;
    let p = app.create_product(&m, "GONE", 100, 2).await;
    let id = p["id"].as_str().expect("id");
    let store_path = format!("/api/v1/stores/{}/products/{id}", m.id);
    let shown = app.get(&store_path).await;
    assert_eq!(shown.status, 200);
    assert_eq!(
        shown.header("cache-control"),
        Some("public, max-age=0, must-revalidate")
    );
    let etag = shown.header("etag").expect("etag").to_owned();
    let revalidated = app
        .send(
            app.client
                .get(app.url(&store_path))
                .insert_header(("If-None-Match", etag)),
            None,
        )
        .await;
    assert_eq!(revalidated.status, 304);

    let deleted = app.archive_product(&m, id).await;
    assert_eq!(deleted.status, 204);
    app.get(&store_path).await.problem(404);
    let own = app
        .get_as(&m.api_key, &format!("/api/v1/products/{id}"))
        .await
        .json();
    assert_eq!(own["status"], "archived");
    let listed = app.get(&format!("/api/v1/stores/{}/products", m.id)).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json()["data"], json!([]));
    app.get(&format!("/api/v1/stores/{}/products", uuid::Uuid::now_v7()))
        .await
        .problem(404);
}
