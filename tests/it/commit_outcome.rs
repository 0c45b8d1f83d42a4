//! A write whose COMMIT answer is lost: the connection breaks with COMMIT in flight, and the
//! client hears what the database holds (201 when it committed, 503 when it did not), never a
//! failure for a write that happened.

use crate::proxy::{Cut, Proxy};
use crate::support::{TestApp, TestPg};
use serde_json::json;

/// The simple-query message tokio-postgres sends to commit: `Q`, its length (4 + 7), `COMMIT\0`.
const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";

/// A shop behind a proxy to PostgreSQL: the service, the proxy, the database's direct URL,
/// the merchant and its checkout body (one of a product with 10 in stock).
struct Shop {
    app: TestApp,
    proxy: Proxy,
    direct: String,
    merchant: crate::support::Merchant,
    body: serde_json::Value,
}

impl Shop {
    async fn open() -> Shop {
        let pg = TestPg::shared();
        let upstream = pg.cluster.port();
        let direct = pg.fresh_database().await;
        let proxy = Proxy::start(upstream).await;
        let app = TestApp::builder()
            .database(&proxy.url(&direct, upstream))
            .spawn()
            .await;
        let merchant = app.create_merchant("Cut Shop").await;
        let product = app.create_product(&merchant, "CUT-1", 500, 10).await;
        let body = json!({"customer_email": "cut@example.com", "items": [{"product_id": product["id"], "quantity": 1}]});
        Shop {
            app,
            proxy,
            direct,
            merchant,
            body,
        }
    }

    /// A checkout with `cut` armed for its COMMIT.
    async fn checkout_cut(&self, cut: Cut) -> crate::support::Reply {
        self.proxy.arm(COMMIT, cut);
        let reply = self.app.checkout(&self.merchant.id, &self.body, None).await;
        assert_eq!(self.proxy.cuts(), 1, "the checkout's COMMIT met the cut");
        reply
    }

    /// What the database (asked directly) holds: orders, and the product's stock.
    async fn held(&self) -> (i64, i64) {
        let row = crate::support::connect(&self.direct)
            .await
            .query_one(
                "SELECT (SELECT count(*) FROM orders), (SELECT stock FROM products)",
                &[],
            )
            .await
            .expect("read the database directly");
        (row.get(0), row.get(1))
    }
}

/// A checkout through the proxy with `cut` armed for its COMMIT: its status, and what the
/// database holds: orders, and the product's stock (10 before).
async fn checkout_with_its_commit_cut(cut: Cut) -> (u16, serde_json::Value, i64, i64) {
    let shop = Shop::open().await;
    let reply = shop.checkout_cut(cut).await;
    let (orders, stock) = shop.held().await;
    let answer = serde_json::from_slice(&reply.body).unwrap_or_default();
    (reply.status.as_u16(), answer, orders, stock)
}

#[actix_rt::test]
async fn a_checkout_that_committed_though_its_answer_was_lost_is_answered_201() {
    let (status, order, orders, stock) = checkout_with_its_commit_cut(Cut::After).await;
    assert_eq!((orders, stock), (1, 9), "PostgreSQL committed the order");
    assert_eq!(status, 201, "{order}");
    assert!(order["id"].is_string(), "{order}");
}

/// The connection goes half-open as COMMIT is sent: PostgreSQL never gets it and does not
/// notice, its session keeps the transaction (and the product's row lock). The lookup ends
/// that session once the transaction has stayed in progress a moment, so the answer is the
/// truth (nothing written: 503) and the next checkout of the product is not stuck behind it.
#[actix_rt::test]
async fn a_checkout_whose_connection_went_half_open_is_answered_503_and_frees_its_locks() {
    let shop = Shop::open().await;
    let stalled = shop.checkout_cut(Cut::Stall).await;
    stalled.assert_status(503);
    let next = shop.app.checkout(&shop.merchant.id, &shop.body, None).await;
    next.assert_status(201);
    assert_eq!(shop.held().await, (1, 9));
}

#[actix_rt::test]
async fn a_checkout_whose_commit_never_arrived_is_answered_503_and_nothing_is_written() {
    let (status, problem, orders, stock) = checkout_with_its_commit_cut(Cut::Instead).await;
    assert_eq!((orders, stock), (0, 10), "nothing was committed");
    assert_eq!(status, 503, "{problem}");
}
