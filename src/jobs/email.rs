//! `order_email`: the customer's confirmation and status mails, through SMTP (lettre) behind
//! the `smtp` circuit, or as `.eml` files under `email.outbox_dir` when `email.smtp_url` is
//! unset. The Message-ID is one per event and order, so a repeated run repeats the same message
//! (and overwrites the same file).

use crate::jobs::context::{field, retry, JobContext, BATCH};
use crate::store::orders::{self, Order};
use deadpool_postgres::Transaction;
use futures_util::future::LocalBoxFuture;
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rampart_actors::{BreakerSettings, Circuit, ClaimRunner, ClaimedJob, DbError, JobFailure};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

pub struct OrderEmail {
    ctx: JobContext,
    smtp: Option<(AsyncSmtpTransport<Tokio1Executor>, Circuit)>,
}

const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

impl OrderEmail {
    pub fn new(ctx: JobContext) -> Self {
        let smtp = ctx.settings.email.smtp_url.as_ref().and_then(|url| {
            let transport = transport(url.expose())
                .map_err(|e| tracing::error!(error = %e, "email.smtp_url is unusable: mails wait"))
                .ok()?;
            let circuit = ctx
                .breakers
                .get("smtp")
                .unwrap_or_else(|| ctx.breakers.register("smtp", breaker(&ctx)));
            Some((transport, circuit))
        });
        Self { ctx, smtp }
    }
}

fn breaker(ctx: &JobContext) -> BreakerSettings {
    ctx.settings.breakers.breaker()
}

/// `smtp://[user:password@]host[:port]` (plain SMTP, port 25 by default).
fn transport(url: &str) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let url = url::Url::parse(url).map_err(|e| e.to_string())?;
    if url.scheme() != "smtp" {
        return Err(format!("scheme {} (expected smtp)", url.scheme()));
    }
    let host = url.host_str().ok_or("no host")?;
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(url.port().unwrap_or(25))
        .timeout(Some(SMTP_TIMEOUT));
    if !url.username().is_empty() {
        builder = builder.credentials(Credentials::new(
            url.username().to_owned(),
            url.password().unwrap_or_default().to_owned(),
        ));
    }
    Ok(builder.build())
}

impl ClaimRunner for OrderEmail {
    fn batch(&self) -> usize {
        BATCH
    }

    /// The batch's orders in one read and each mail composed, then sent one by one through SMTP
    /// or written to the outbox together.
    fn apply<'a>(
        &'a self,
        tx: &'a Transaction<'_>,
        jobs: &'a [ClaimedJob],
    ) -> LocalBoxFuture<'a, Result<Vec<Result<(), JobFailure>>, DbError>> {
        Box::pin(async move {
            let parsed: Vec<Result<(String, Uuid, Uuid), JobFailure>> = jobs
                .iter()
                .map(|job| {
                    let merchant = job.merchant_id.ok_or_else(|| {
                        JobFailure::Permanent("email job without merchant".into())
                    })?;
                    Ok((field(job, "event")?, field(job, "order_id")?, merchant))
                })
                .collect();
            let ids: Vec<Uuid> = parsed
                .iter()
                .filter_map(|p| p.as_ref().ok())
                .map(|p| p.1)
                .collect();
            let rows = orders::get_many(tx, &ids).await?;
            let from = self.ctx.settings.email.from.clone();
            let n = parsed.len();
            let compose_all = move || -> Vec<Result<(String, Message), JobFailure>> {
                // Once a batch: a malformed sender fails each of its mails alike.
                let from: Result<Mailbox, JobFailure> = from
                    .parse()
                    .map_err(|e| JobFailure::Permanent(format!("email.from: {e}")));
                let orders: HashMap<Uuid, (Uuid, String, Order)> = match rows.decode() {
                    Ok(orders) => orders.into_iter().map(|o| (o.2.id, o)).collect(),
                    Err(e) => return vec![Err(retry(e)); parsed.len()],
                };
                parsed
                    .into_iter()
                    .map(|job| {
                        let (event, order_id, merchant) = job?;
                        let Some((_, store, order)) =
                            orders.get(&order_id).filter(|o| o.0 == merchant)
                        else {
                            return Err(JobFailure::Permanent(format!(
                                "order {order_id} not found"
                            )));
                        };
                        let id = format!("{}.{order_id}@rampart", event.replace('.', "-"));
                        let message = compose(from.clone()?, store, order, &event, &id)?;
                        Ok((id, message))
                    })
                    .collect()
            };
            let Some((transport, circuit)) = self.smtp.as_ref() else {
                let outbox = self.ctx.settings.email.outbox_dir.clone();
                return Ok(off_the_db_thread(n, move || write_emls(&outbox, compose_all())).await);
            };
            let composed = off_the_db_thread(n, compose_all).await;
            let mut results = Vec::with_capacity(composed.len());
            for mail in composed {
                results.push(match mail {
                    Ok((_, message)) => send(transport, circuit, message).await,
                    Err(e) => Err(e),
                });
            }
            Ok(results)
        })
    }
}

/// Sends `message` through SMTP behind its circuit.
async fn send(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    circuit: &Circuit,
    message: Message,
) -> Result<(), JobFailure> {
    let call = circuit.try_call().map_err(|open| {
        JobFailure::Deferred(open.retry_after, "the SMTP circuit is open".into())
    })?;
    match transport.send(message).await {
        Ok(_) => {
            call.succeeded();
            Ok(())
        }
        Err(e) if e.is_permanent() => {
            call.succeeded();
            Err(JobFailure::Permanent(format!("SMTP refused the mail: {e}")))
        }
        Err(e) => {
            call.failed();
            Err(JobFailure::Retry(format!("SMTP: {e}")))
        }
    }
}

fn compose(
    from: Mailbox,
    store: &str,
    order: &Order,
    event: &str,
    message_id: &str,
) -> Result<Message, JobFailure> {
    let to: Mailbox = order
        .customer_email
        .parse()
        .map_err(|e| JobFailure::Permanent(format!("customer email: {e}")))?;
    let what = match event {
        "order.created" => "is confirmed".to_owned(),
        other => format!("is now {}", other.trim_start_matches("order.")),
    };
    let mut body = format!(
        "Hello{},\n\nYour order #{} at {store} {what}.\n\n",
        order
            .customer_name
            .as_deref()
            .map(|n| format!(" {n}"))
            .unwrap_or_default(),
        order.number
    );
    for item in &order.items {
        body.push_str(&format!(
            "  {} x {} ({}) at {} {}\n",
            item.quantity,
            item.name,
            item.sku,
            cents(item.unit_price_cents),
            order.currency
        ));
    }
    body.push_str(&format!(
        "\nTotal: {} {}\n",
        cents(order.total_cents),
        order.currency
    ));
    Message::builder()
        .from(from)
        .to(to)
        .message_id(Some(format!("<{message_id}>")))
        .subject(format!("Order #{} at {store} {what}", order.number))
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| JobFailure::Permanent(format!("composing the mail: {e}")))
}

fn cents(v: i64) -> String {
    format!("{}.{:02}", v / 100, (v % 100).abs())
}

/// Runs `work`, one result per mail of a batch of `n`, in one trip to the blocking pool (each
/// a retry if the pool could not run it). Composing and writing mails there keeps them off the
/// database actor's thread, which drives every request's statements (a batch of mails held it
/// for milliseconds); one trip rather than one per mail spares a thread wake-up each.
async fn off_the_db_thread<T: Send + 'static>(
    n: usize,
    work: impl FnOnce() -> Vec<Result<T, JobFailure>> + Send + 'static,
) -> Vec<Result<T, JobFailure>> {
    actix_web::rt::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| {
            (0..n)
                .map(|_| Err(JobFailure::Retry(format!("the blocking pool: {e}"))))
                .collect()
        })
}

/// Writes the batch's composed mails to the outbox: one result per mail.
fn write_emls(
    dir: &Path,
    mails: Vec<Result<(String, Message), JobFailure>>,
) -> Vec<Result<(), JobFailure>> {
    let made = std::fs::create_dir_all(dir).map_err(|e| e.to_string());
    mails
        .into_iter()
        .map(|mail| {
            let (id, message) = mail?;
            made.clone()
                .map_err(std::io::Error::other)
                .and_then(|()| {
                    write_whole(
                        dir,
                        &format!("{}.eml", file_name(&id)),
                        &message.formatted(),
                    )
                })
                .map_err(|e| JobFailure::Retry(format!("writing the .eml file: {e}")))
        })
        .collect()
}

/// The file name of a Message-ID: letters, digits, `-` and `.` kept, anything else `_`.
fn file_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes `bytes` as `dir/name` so that a reader sees the whole file or none of it, replacing
/// the file a repeated run wrote. An unnamed file (`O_TMPFILE`) is written and then linked
/// under its name: one directory entry made, where a temporary name and a rename made two and
/// removed one, and the outbox's directory operations were most of what a mail cost the
/// service (perf of `make bench SCENARIO=jobs`: `openat` and `rename` in a directory of a file
/// per mail). Where the file system has no unnamed files, or the name exists, a temporary name
/// and a rename.
fn write_whole(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let path = dir.join(name);
    if write_unnamed(dir, &path, bytes).is_ok() {
        return Ok(());
    }
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, &path)
}

#[cfg(target_os = "linux")]
fn write_unnamed(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .mode(0o644)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)?;
    file.write_all(bytes)?;
    // The unnamed file is reachable through its descriptor's link in /proc (open(2), O_TMPFILE).
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let to = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: both arguments are NUL-terminated strings that live until the call returns.
    let linked = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if linked == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn write_unnamed(_: &Path, _: &Path, _: &[u8]) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(test)]
mod tests {
    use super::{write_unnamed, write_whole};

    #[test]
    fn a_mail_file_is_written_whole_and_a_repeat_replaces_it_leaving_nothing_else() {
        let dir = std::env::temp_dir().join(format!("rampart-whole-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        // A new name takes the one-step path where the file system has unnamed files (Linux).
        if cfg!(target_os = "linux") {
            write_unnamed(&dir, &dir.join("m.eml"), b"zeroth").unwrap();
        }
        write_whole(&dir, "m.eml", b"first").unwrap();
        assert_eq!(std::fs::read(dir.join("m.eml")).unwrap(), b"first");
        write_whole(&dir, "m.eml", b"second, longer").unwrap();
        assert_eq!(std::fs::read(dir.join("m.eml")).unwrap(), b"second, longer");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["m.eml"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
