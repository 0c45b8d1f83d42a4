//! `order_email`: the customer's confirmation and status mails, through SMTP (lettre, pooled
//! connections) behind the `smtp` circuit, or as `.eml` files under `email.outbox_dir` when
//! `email.smtp_url` is unset.
//!
//! A mail is an external effect: it runs apart under a committed lease, never inside a
//! transaction that could roll back after it was sent ([`JobRunner::effects`]). A batch's orders
//! are read in one statement and its mails composed together; then each mail is sent, and its
//! outcome recorded, before the next. The Message-ID is the job's (`<job-id@rampart>`), so a
//! repeat after a crash is the same message to the relay and the customer, and the outbox's file
//! is named by the job too (a repeat replaces it).

use crate::jobs::context::{field, retry, JobContext};
use crate::store::orders::{self, Order, OrderRows};
use futures_util::future::LocalBoxFuture;
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::{AsyncSmtpTransportBuilder, PoolConfig};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rampart_actors::{
    BreakerSettings, Circuit, ClaimedJob, Conn, DbCommand, DbError, Effect, JobFailure, JobRunner,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

pub struct OrderEmail {
    ctx: JobContext,
    smtp: Option<Smtp>,
}

/// The most mails one run takes: read and composed together, then sent one by one (each outcome
/// recorded before the next). A run holds its jobs under a lease renewed while it lasts; a
/// graceful stop hands back the ones it has not started.
const BATCH: usize = 32;

impl OrderEmail {
    pub fn new(ctx: JobContext) -> Self {
        let smtp = ctx.settings.email.smtp_url.as_ref().and_then(|url| {
            let timeout = Duration::from_millis(ctx.settings.email.timeout_ms);
            let builder = transport(url.expose(), timeout)
                .map_err(|e| tracing::error!(error = %e, "email.smtp_url is unusable: mails wait"))
                .ok()?;
            let circuit = ctx
                .breakers
                .get("smtp")
                .unwrap_or_else(|| ctx.breakers.register("smtp", breaker(&ctx)));
            // One connection per send at once: the email queue's concurrency.
            let connections = ctx
                .settings
                .jobs
                .concurrency
                .get(crate::jobs::kinds::ORDER_EMAIL.queue)
                .copied()
                .unwrap_or(1)
                .max(1);
            Some(Smtp {
                timeout,
                builder: builder.pool_config(PoolConfig::new().max_size(connections)),
                transport: Arc::default(),
                circuit,
            })
        });
        Self { ctx, smtp }
    }
}

fn breaker(ctx: &JobContext) -> BreakerSettings {
    ctx.settings.breakers.breaker()
}

/// `smtp://[user:password@]host[:port]` (plain SMTP, port 25 by default).
fn transport(url: &str, timeout: Duration) -> Result<AsyncSmtpTransportBuilder, String> {
    let url = url::Url::parse(url).map_err(|e| e.to_string())?;
    if url.scheme() != "smtp" {
        return Err(format!("scheme {} (expected smtp)", url.scheme()));
    }
    let host = url.host_str().ok_or("no host")?;
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(url.port().unwrap_or(25))
        .timeout(Some(timeout));
    if !url.username().is_empty() {
        builder = builder.credentials(Credentials::new(
            url.username().to_owned(),
            url.password().unwrap_or_default().to_owned(),
        ));
    }
    Ok(builder)
}

/// The relay: one transport, its pool of connections reused by every send, built on first use
/// (on the jobs' thread, where its connections and their idle sweep live), and built again after
/// a send outlasted its bound (that send's connection may still owe an answer: it must not go
/// back into use).
#[derive(Clone)]
struct Smtp {
    /// How long connecting may take, and a whole send (a pooled connection's check, the
    /// envelope, the message and its answer): past it the send is a failure that spends an
    /// attempt (lettre bounds only the connect). `email.timeout_ms`.
    timeout: Duration,
    builder: AsyncSmtpTransportBuilder,
    transport: Arc<Mutex<Option<Arc<AsyncSmtpTransport<Tokio1Executor>>>>>,
    circuit: Circuit,
}

impl Smtp {
    fn transport(&self) -> Arc<AsyncSmtpTransport<Tokio1Executor>> {
        let mut held = self.transport.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(held.get_or_insert_with(|| Arc::new(self.builder.clone().build())))
    }

    /// Retires `used` (if it is still the shared transport): the next send builds another.
    fn retire(&self, used: &Arc<AsyncSmtpTransport<Tokio1Executor>>) {
        let mut held = self.transport.lock().unwrap_or_else(|e| e.into_inner());
        if held.as_ref().is_some_and(|t| Arc::ptr_eq(t, used)) {
            *held = None;
        }
    }

    /// Sends `message` behind the circuit, within its timeout.
    async fn send(self, message: Message) -> Result<(), JobFailure> {
        let call = self.circuit.try_call().map_err(|open| {
            JobFailure::Deferred(open.retry_after, "the SMTP circuit is open".into())
        })?;
        let transport = self.transport();
        match tokio::time::timeout(self.timeout, transport.send(message)).await {
            Ok(Ok(_)) => {
                call.succeeded();
                Ok(())
            }
            Ok(Err(e)) if e.is_permanent() => {
                call.succeeded();
                Err(JobFailure::Permanent(format!("SMTP refused the mail: {e}")))
            }
            Ok(Err(e)) => {
                call.failed();
                Err(JobFailure::Retry(format!("SMTP: {e}")))
            }
            Err(_) => {
                call.failed();
                self.retire(&transport);
                Err(JobFailure::Retry(format!(
                    "SMTP: no answer within {:?}",
                    self.timeout
                )))
            }
        }
    }
}

/// The orders of a batch of mails, in one read, waited for as long as the dispatcher waits for
/// its own commands (its jobs are leased meanwhile): a failed read costs each mail an attempt.
struct ReadOrders(Vec<Uuid>);

const READ_WAIT: Duration = Duration::from_secs(10);

impl DbCommand for ReadOrders {
    type Output = OrderRows;

    async fn run(self, conn: &mut Conn) -> Result<OrderRows, DbError> {
        orders::get_many(&**conn, &self.0).await
    }
}

/// A job's mail as its payload names it: the event, the order, the merchant.
type Named = (String, Uuid, Uuid);

fn parse(job: &ClaimedJob) -> Result<Named, JobFailure> {
    let merchant = job
        .merchant_id
        .ok_or_else(|| JobFailure::Permanent("email job without merchant".into()))?;
    Ok((field(job, "event")?, field(job, "order_id")?, merchant))
}

impl OrderEmail {
    /// The batch's orders in one read and each mail composed; then, through SMTP, one send per
    /// mail to be made, or, to the outbox, every file written at once (settled: a file written
    /// whole again is the same file).
    fn prepare(&self, jobs: &[ClaimedJob]) -> LocalBoxFuture<'static, Vec<Effect>> {
        let parsed: Vec<(Uuid, Result<Named, JobFailure>)> =
            jobs.iter().map(|job| (job.id, parse(job))).collect();
        let (db, smtp) = (self.ctx.db.clone(), self.smtp.clone());
        let (from, outbox) = (
            self.ctx.settings.email.from.clone(),
            self.ctx.settings.email.outbox_dir.clone(),
        );
        Box::pin(async move {
            let n = parsed.len();
            let ids: Vec<Uuid> = parsed
                .iter()
                .filter_map(|(_, p)| p.as_ref().ok())
                .map(|p| p.1)
                .collect();
            let rows = match db.run_within(ReadOrders(ids), READ_WAIT).await {
                Ok(rows) => rows,
                Err(e) => {
                    let failure = retry(e);
                    return (0..n)
                        .map(|_| Effect::Settled(Err(failure.clone())))
                        .collect();
                }
            };
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
                    .map(|(job_id, job)| {
                        let (event, order_id, merchant) = job?;
                        let Some((_, store, order)) =
                            orders.get(&order_id).filter(|o| o.0 == merchant)
                        else {
                            return Err(JobFailure::Permanent(format!(
                                "order {order_id} not found"
                            )));
                        };
                        let message = compose(from.clone()?, store, order, &event, job_id)?;
                        Ok((job_id.to_string(), message))
                    })
                    .collect()
            };
            let Some(smtp) = smtp else {
                let written =
                    on_the_blocking_pool(n, move || write_emls(&outbox, compose_all())).await;
                return written.into_iter().map(Effect::Settled).collect();
            };
            on_the_blocking_pool(n, compose_all)
                .await
                .into_iter()
                .map(|mail| match mail {
                    Ok((_, message)) => Effect::Pending(Box::pin(smtp.clone().send(message))),
                    Err(e) => Effect::Settled(Err(e)),
                })
                .collect()
        })
    }
}

impl JobRunner for OrderEmail {
    /// One mail alone (the dispatcher makes a batch's through [`JobRunner::effects`]).
    fn run(&self, job: ClaimedJob) -> LocalBoxFuture<'static, Result<(), JobFailure>> {
        let prepared = self.prepare(std::slice::from_ref(&job));
        Box::pin(async move {
            match prepared.await.pop() {
                Some(Effect::Settled(result)) => result,
                Some(Effect::Pending(send)) => send.await,
                None => Err(JobFailure::Retry("no mail was prepared".into())),
            }
        })
    }

    fn batch(&self) -> usize {
        BATCH
    }

    fn effects(&self, jobs: &[ClaimedJob]) -> Option<LocalBoxFuture<'static, Vec<Effect>>> {
        Some(self.prepare(jobs))
    }
}

fn compose(
    from: Mailbox,
    store: &str,
    order: &Order,
    event: &str,
    job_id: Uuid,
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
        .message_id(Some(message_id(job_id)))
        .subject(format!("Order #{} at {store} {what}", order.number))
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| JobFailure::Permanent(format!("composing the mail: {e}")))
}

/// A mail's Message-ID: its job's, the same on every run of the job.
fn message_id(job_id: Uuid) -> String {
    format!("<{job_id}@rampart>")
}

fn cents(v: i64) -> String {
    format!("{}.{:02}", v / 100, (v % 100).abs())
}

/// Runs `work`, one result per mail of a batch of `n`, in one trip to the blocking pool (each
/// a retry if the pool could not run it). Composing and writing mails there keeps them off the
/// jobs' thread, which drives every run's sends and leases; one trip rather than one per mail
/// spares a thread wake-up each.
async fn on_the_blocking_pool<T: Send + 'static>(
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

/// Writes the batch's composed mails to the outbox (`<job id>.eml`): one result per mail.
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
                .and_then(|()| write_whole(dir, &format!("{id}.eml"), &message.formatted()))
                .map_err(|e| JobFailure::Retry(format!("writing the .eml file: {e}")))
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
