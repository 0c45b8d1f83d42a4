//! A TCP proxy on loopback between the service and a real server (PostgreSQL, Redis), to lose
//! what a test names at the moment it names: a connection broken on a given command, before or
//! after passing it on, or a subscription that goes silent without breaking.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What happens to the connection whose bytes first contain an armed pattern.
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    /// The bytes reach the server, then the connection breaks: the server acts, its answer is
    /// lost.
    After,
    /// The connection breaks instead of passing the bytes on: the server never sees them.
    Instead,
    /// The bytes are dropped and the client's side is closed, the server's left open and
    /// silent (a half-open connection): the server neither sees them nor notices the break.
    Stall,
}

#[derive(Default)]
struct Shared {
    armed: Mutex<Option<(Vec<u8>, Cut)>>,
    cuts: AtomicUsize,
    /// The silencing switch of each connection that subscribed (sent `SUBSCRIBE`).
    subscribers: Mutex<Vec<Arc<AtomicBool>>>,
    /// The servers' sides of stalled connections, kept open.
    stalled: Mutex<Vec<tokio::net::tcp::OwnedWriteHalf>>,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free loopback port and passes every connection on to `upstream`'s port.
    pub async fn start(upstream: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let shared: Arc<Shared> = Arc::default();
        let for_loop = Arc::clone(&shared);
        actix_rt::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                actix_rt::spawn(relay(client, upstream, Arc::clone(&for_loop)));
            }
        });
        Proxy { port, shared }
    }

    /// `url` (of the server behind, on `upstream`) through this proxy.
    pub fn url(&self, url: &str, upstream: u16) -> String {
        let through = url.replacen(&format!(":{upstream}"), &format!(":{}", self.port), 1);
        assert_ne!(through, url, "{url} names port {upstream}");
        through
    }

    /// The next connection to send `pattern` is cut so (once).
    pub fn arm(&self, pattern: &[u8], cut: Cut) {
        *self.shared.armed.lock().expect("lock") = Some((pattern.to_vec(), cut));
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> usize {
        self.shared.cuts.load(SeqCst)
    }

    /// Every subscription open now stops hearing the server, its connection left open (a
    /// middlebox that dropped it silently). Subscriptions opened later hear again.
    pub fn silence_subscriptions(&self) -> usize {
        let subscribers = self.shared.subscribers.lock().expect("lock");
        for deaf in subscribers.iter() {
            deaf.store(true, SeqCst);
        }
        subscribers.len()
    }
}

async fn relay(client: tokio::net::TcpStream, upstream: u16, shared: Arc<Shared>) {
    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let deaf: Arc<AtomicBool> = Arc::default();
    let silenced = Arc::clone(&deaf);
    let answers = actix_rt::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_server.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if !silenced.load(SeqCst) && to_client.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut subscribed = false;
    loop {
        let n = match from_client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if !subscribed && contains(chunk, b"SUBSCRIBE") {
            subscribed = true;
            shared
                .subscribers
                .lock()
                .expect("lock")
                .push(Arc::clone(&deaf));
        }
        let cut = {
            let mut armed = shared.armed.lock().expect("lock");
            match armed.as_ref() {
                Some((pattern, _)) if contains(chunk, pattern) => armed.take().map(|(_, c)| c),
                _ => None,
            }
        };
        if matches!(cut, None | Some(Cut::After)) && to_server.write_all(chunk).await.is_err() {
            break;
        }
        if let Some(cut) = cut {
            shared.cuts.fetch_add(1, SeqCst);
            if matches!(cut, Cut::Stall) {
                shared.stalled.lock().expect("lock").push(to_server);
            }
            break;
        }
    }
    // Both directions closed: the client sees its connection break.
    answers.abort();
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
