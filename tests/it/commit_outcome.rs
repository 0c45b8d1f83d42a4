//! A write whose COMMIT answer is lost: the connection breaks with COMMIT in flight, and the
//! client hears what the database holds (201 when it committed, 503 when it did not), never a
//! failure for a write that happened.

use crate::support::{TestApp, TestPg};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The simple-query message tokio-postgres sends to commit: `Q`, its length (4 + 7), `COMMIT\0`.
const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";

#[derive(Clone, Copy)]
enum Cut {
    /// COMMIT reaches PostgreSQL, then the connection breaks: it commits, its answer is lost.
    AfterCommit,
    /// The connection breaks instead of passing COMMIT on: PostgreSQL rolls back.
    BeforeCommit,
}

/// A TCP proxy in front of PostgreSQL that, once armed, breaks the next connection to send
/// COMMIT.
struct CommitCutter {
    port: u16,
    armed: Arc<Mutex<Option<Cut>>>,
    cuts: Arc<AtomicUsize>,
}

impl CommitCutter {
    async fn start(upstream: u16) -> CommitCutter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let armed: Arc<Mutex<Option<Cut>>> = Arc::default();
        let cuts: Arc<AtomicUsize> = Arc::default();
        let (for_loop, cuts_for_loop) = (Arc::clone(&armed), Arc::clone(&cuts));
        actix_rt::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (armed, cuts) = (Arc::clone(&for_loop), Arc::clone(&cuts_for_loop));
                actix_rt::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let answers = actix_rt::spawn(async move {
                        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from_client.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        let commits = chunk.windows(COMMIT.len()).any(|w| w == COMMIT);
                        let cut = if commits {
                            armed.lock().expect("lock").take()
                        } else {
                            None
                        };
                        if matches!(cut, None | Some(Cut::AfterCommit))
                            && to_server.write_all(chunk).await.is_err()
                        {
                            break;
                        }
                        if cut.is_some() {
                            cuts.fetch_add(1, SeqCst);
                            break;
                        }
                    }
                    // Both directions closed: the client sees its connection break.
                    answers.abort();
                });
            }
        });
        CommitCutter { port, armed, cuts }
    }

    /// `url` (a database of the cluster behind) through this proxy.
    fn url(&self, url: &str, upstream: u16) -> String {
        url.replace(&format!(":{upstream}/"), &format!(":{}/", self.port))
    }

    fn arm(&self, cut: Cut) {
        *self.armed.lock().expect("lock") = Some(cut);
    }

    fn cuts(&self) -> usize {
        self.cuts.load(SeqCst)
    }
}

/// A checkout through the proxy with `cut` armed for its COMMIT: its status, and what the
/// database (asked directly) holds: orders, and the product's stock (10 before).
async fn checkout_with_its_commit_cut(cut: Cut) -> (u16, serde_json::Value, i64, i64) {
    let pg = TestPg::shared();
    let upstream = pg.cluster.port();
    let direct = pg.fresh_database().await;
    let cutter = CommitCutter::start(upstream).await;
    let app = TestApp::builder()
        .database(&cutter.url(&direct, upstream))
        .spawn()
        .await;
    let merchant = app.create_merchant("Cut Shop").await;
    let product = app.create_product(&merchant, "CUT-1", 500, 10).await;
    cutter.arm(cut);
    let body = json!({"customer_email": "cut@example.com", "items": [{"product_id": product["id"], "quantity": 1}]});
    let reply = app.checkout(&merchant.id, &body, None).await;
    assert_eq!(cutter.cuts(), 1, "the checkout's COMMIT met the cut");
    let held = crate::support::connect(&direct)
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM orders), (SELECT stock FROM products)",
            &[],
        )
        .await
        .expect("read the database directly");
    let answer = serde_json::from_slice(&reply.body).unwrap_or_default();
    (reply.status.as_u16(), answer, held.get(0), held.get(1))
}

#[actix_rt::test]
async fn a_checkout_that_committed_though_its_answer_was_lost_is_answered_201() {
    let (status, order, orders, stock) = checkout_with_its_commit_cut(Cut::AfterCommit).await;
    assert_eq!((orders, stock), (1, 9), "PostgreSQL committed the order");
    assert_eq!(status, 201, "{order}");
    assert!(order["id"].is_string(), "{order}");
}

#[actix_rt::test]
async fn a_checkout_whose_commit_never_arrived_is_answered_503_and_nothing_is_written() {
    let (status, problem, orders, stock) = checkout_with_its_commit_cut(Cut::BeforeCommit).await;
    assert_eq!((orders, stock), (0, 10), "nothing was committed");
    assert_eq!(status, 503, "{problem}");
}
