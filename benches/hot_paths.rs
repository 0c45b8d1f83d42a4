//! Hot functions on the request path: cursor encode and decode, one GCRA step, one rate limit
//! decision in process, a closed circuit's admit and report, a concurrency limit's admit and
//! report; and one mail to a relay on loopback, over a pooled connection (as the mail jobs send)
//! against a connection of its own (as they sent before).
#![allow(clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use rampart::domain::listing::{CursorKey, CursorScope, KeyValue, Position};
use std::hint::black_box;

fn cursors(c: &mut Criterion) {
    let key = CursorKey::new(b"bench-secret");
    let scope = CursorScope {
        listing: "storefront",
        merchant_id: uuid::Uuid::now_v7(),
        sort: "-created_at",
        filters: "ProductFilter { category: Some(\"tools\") }".into(),
    };
    let position = Position {
        key: KeyValue::Time(chrono::Utc::now()),
        id: uuid::Uuid::now_v7(),
    };
    let cursor = key.encode(&scope, &position);
    c.bench_function("cursor encode", |b| {
        b.iter(|| key.encode(black_box(&scope), black_box(&position)))
    });
    c.bench_function("cursor decode", |b| {
        b.iter(|| key.decode(black_box(&scope), black_box(&cursor)))
    });
}

fn gcra(c: &mut Criterion) {
    let limiter = rampart_actors::Gcra::new(600, std::time::Duration::from_secs(60));
    let mut tat = None;
    let mut now = 0u64;
    c.bench_function("gcra step", |b| {
        b.iter(|| {
            now += 50_000_000;
            if let rampart_actors::Decision::Allow { tat: t, .. } =
                limiter.check(black_box(tat), black_box(now))
            {
                tat = Some(t);
            }
        })
    });
}

fn guardians(c: &mut Criterion) {
    use rampart_actors::{
        BreakerSettings, Circuit, ConcurrencyLimit, Criticality, LimitClass, LimitSettings,
        RateLimits,
    };
    use std::time::{Duration, Instant};
    let limits = RateLimits::new(
        vec![LimitClass {
            name: "storefront".into(),
            limit: 1_000_000_000,
            period: Duration::from_secs(60),
        }],
        100_000,
        None,
    );
    c.bench_function("rate limit decision (in process, one hot key)", |b| {
        b.iter(|| limits.check_local(0, black_box("203.0.113.7"), Instant::now()))
    });
    let circuit = Circuit::new("postgres", BreakerSettings::default(), None);
    c.bench_function("closed circuit: admit and report", |b| {
        b.iter(|| circuit.try_call().map(|call| call.succeeded()))
    });
    let limit = ConcurrencyLimit::new(LimitSettings::default());
    c.bench_function("concurrency limit: admit and report", |b| {
        b.iter(|| {
            if let Some(permit) = limit.try_acquire(black_box(Criticality::Sheddable)) {
                permit.finish(Duration::from_micros(300));
            }
        })
    });
}

/// A relay on loopback that takes every mail (RFC 5321's happy path), one task per connection.
/// It acknowledges every segment at once (`TCP_QUICKACK`): lettre writes a message and its
/// closing `.` in two writes, and against a delayed ACK (Linux holds it up to 40 ms while it
/// waits for more) Nagle holds the `.` back, so every mail would cost those 40 ms whatever the
/// connection; with `quick` false the relay behaves as Linux does by default.
async fn relay(quick: bool) -> u16 {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
                let quick_ack = || {
                    if quick {
                        let on: libc::c_int = 1;
                        // SAFETY: `fd` is this connection's socket, open while `socket`'s halves
                        // live (the whole loop); the option is an int.
                        unsafe {
                            libc::setsockopt(
                                fd,
                                libc::IPPROTO_TCP,
                                libc::TCP_QUICKACK,
                                std::ptr::addr_of!(on).cast(),
                                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                            );
                        }
                    }
                };
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 relay\r\n").await?;
                let mut in_data = false;
                while let Some(line) = lines.next_line().await? {
                    quick_ack();
                    let reply: &[u8] = if in_data {
                        if line != "." {
                            continue;
                        }
                        in_data = false;
                        b"250 queued\r\n"
                    } else if line.starts_with("EHLO") {
                        b"250-relay\r\n250 8BITMIME\r\n"
                    } else if line.starts_with("DATA") {
                        in_data = true;
                        b"354 go on\r\n"
                    } else if line.starts_with("QUIT") {
                        write.write_all(b"221 bye\r\n").await?;
                        break;
                    } else {
                        b"250 ok\r\n"
                    };
                    write.write_all(reply).await?;
                }
                Ok::<_, std::io::Error>(())
            });
        }
    });
    port
}

fn mail(c: &mut Criterion) {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (quick, delayed) = (rt.block_on(relay(true)), rt.block_on(relay(false)));
    let transport = |port| {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(port)
            .build()
    };
    let message = || {
        Message::builder()
            .from("Rampart <no-reply@rampart.local>".parse().expect("from"))
            .to("buyer@example.com".parse().expect("to"))
            .subject("Order #1 at Bench Shop is confirmed")
            .body("Thank you for your order.".to_owned())
            .expect("message")
    };
    let mut group = c.benchmark_group("mail to a relay on loopback");
    // The pool's idle sweep is a task of the runtime the transport is built in.
    let _entered = rt.enter();
    for (port, relay) in [(quick, "acks at once"), (delayed, "delayed ACKs")] {
        let pooled = transport(port);
        group.bench_function(
            format!("pooled connection (as shipped), relay {relay}"),
            |b| b.iter(|| rt.block_on(pooled.send(message())).expect("sent")),
        );
        group.bench_function(
            format!("a connection per mail (before), relay {relay}"),
            |b| {
                b.iter(|| {
                    rt.block_on(async { transport(port).send(message()).await })
                        .expect("sent")
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, cursors, gcra, guardians, mail);
criterion_main!(benches);
