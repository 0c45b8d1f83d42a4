//! Real receivers on loopback for the jobs' deliveries: an HTTP server taking webhooks and an
//! SMTP server taking mail. Both keep what they received for the tests to read.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One request the receiver took.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub signature: String,
    pub body: Vec<u8>,
    /// Every header, names in lower case.
    pub headers: Vec<(String, String)>,
}

impl Delivery {
    /// The value of the header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as an `application/x-www-form-urlencoded` form, field by field.
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&self.body)
            .into_owned()
            .collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON event")
    }
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// 200 to everything.
    Accept,
    /// 500 to the first `n` requests, then 200.
    FailFirst(usize),
    /// Never answers (holds each request for a minute).
    Hang,
    /// 307 to this URL.
    Redirect(&'static str),
}

#[derive(Clone)]
pub struct WebhookReceiver {
    pub url: String,
    received: Arc<Mutex<Vec<Delivery>>>,
    server: actix_web::dev::ServerHandle,
}

impl WebhookReceiver {
    pub fn start(behaviour: Behaviour) -> WebhookReceiver {
        Self::start_on(
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind"),
            behaviour,
        )
    }

    /// One on a port of the caller's choosing (a destination that was down and comes back).
    pub fn start_at(port: u16, behaviour: Behaviour) -> WebhookReceiver {
        Self::start_on(
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind"),
            behaviour,
        )
    }

    fn start_on(listener: std::net::TcpListener, behaviour: Behaviour) -> WebhookReceiver {
        let received: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let seen = Arc::clone(&received);
        let port = listener.local_addr().expect("addr").port();
        let server = HttpServer::new(move || {
            let seen = Arc::clone(&seen);
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let seen = Arc::clone(&seen);
                async move {
                    let n = {
                        let mut seen = seen.lock().expect("lock");
                        seen.push(Delivery {
                            signature: req
                                .headers()
                                .get("rampart-signature")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned(),
                            body: body.to_vec(),
                            headers: req
                                .headers()
                                .iter()
                                .map(|(n, v)| {
                                    let v = v.to_str().unwrap_or_default();
                                    (n.as_str().to_owned(), v.to_owned())
                                })
                                .collect(),
                        });
                        seen.len()
                    };
                    match behaviour {
                        Behaviour::Accept => HttpResponse::Ok().finish(),
                        Behaviour::FailFirst(k) if n <= k => {
                            HttpResponse::InternalServerError().finish()
                        }
                        Behaviour::FailFirst(_) => HttpResponse::Ok().finish(),
                        Behaviour::Hang => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            HttpResponse::Ok().finish()
                        }
                        Behaviour::Redirect(to) => HttpResponse::TemporaryRedirect()
                            .insert_header(("Location", to))
                            .finish(),
                    }
                }
            }))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .listen(listener)
        .expect("listen")
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);
        WebhookReceiver {
            url: format!("http://127.0.0.1:{port}/hooks"),
            received,
            server: handle,
        }
    }

    pub fn received(&self) -> Vec<Delivery> {
        self.received.lock().expect("lock").clone()
    }

    pub async fn stop(&self) {
        self.server.stop(false).await;
    }
}

/// One message the SMTP server took.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

/// A minimal SMTP server (RFC 5321: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT).
#[derive(Clone)]
pub struct SmtpSink {
    pub url: String,
    mails: Arc<Mutex<Vec<Mail>>>,
    /// Connections open now.
    open: Arc<std::sync::atomic::AtomicUsize>,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        Self::answering_after(Duration::ZERO).await
    }

    /// One that takes `delay` to accept each message (after its data, before its `250`).
    pub async fn answering_after(delay: Duration) -> SmtpSink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mails: Arc<Mutex<Vec<Mail>>> = Arc::default();
        let open: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (store, sessions) = (Arc::clone(&mails), Arc::clone(&open));
        actix_rt::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (store, sessions) = (Arc::clone(&store), Arc::clone(&sessions));
                sessions.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                actix_rt::spawn(async move {
                    let _ = session(socket, store, delay).await;
                    sessions.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        SmtpSink {
            url: format!("smtp://127.0.0.1:{port}"),
            mails,
            open,
        }
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().expect("lock").clone()
    }

    /// Connections open now (a client gone, every byte it sent has been read once this is 0).
    pub fn connections(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn session(
    socket: tokio::net::TcpStream,
    store: Arc<Mutex<Vec<Mail>>>,
    delay: Duration,
) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink ESMTP\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            b"250 ok\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = line[10..].trim().to_owned();
            to.clear();
            b"250 ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            to.push(line[8..].trim().to_owned());
            b"250 ok\r\n"
        } else if upper.starts_with("RSET") {
            from.clear();
            to.clear();
            b"250 ok\r\n"
        } else if upper.starts_with("DATA") {
            write.write_all(b"354 go on\r\n").await?;
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            store.lock().expect("lock").push(Mail {
                from: from.clone(),
                to: to.clone(),
                data,
            });
            tokio::time::sleep(delay).await;
            b"250 queued\r\n"
        } else if upper.starts_with("QUIT") {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"502 not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
}
