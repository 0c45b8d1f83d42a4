//! `order_sms`: the customer's SMS about an order's confirmation and each status change, for
//! orders whose checkout gave `customer_phone`.
//!
//! With `sms.provider_url` set, the message is `POST`ed to a Twilio-compatible Messages API: a
//! form of `To`, `From` (`sms.from`) and `Body`, with HTTP basic auth
//! `sms.account_sid:sms.auth_token`, behind the provider's own circuit (`sms`). A `2xx` is done;
//! anything else is a failure, retried with backoff (an open circuit defers the job without
//! spending an attempt). Unset, each message is a file under `sms.outbox_dir`.
//!
//! The job id is the message's stable id: it names the outbox file (a repeated run rewrites the
//! same file) and goes to the provider as `Idempotency-Key`. The job runs apart from the claim
//! (claimed under a lease, sent, outcome recorded): a message sent cannot be rolled back, so it
//! is never sent inside a transaction that could be.

use crate::jobs::context::{field, retry, JobContext};
use crate::jobs::webhook::tls;
use crate::store::orders::{self, Order};
use futures_util::future::LocalBoxFuture;
use rampart_actors::{Circuit, ClaimedJob, Conn, DbCommand, DbError, JobFailure, JobRunner};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A provider's request's time limit (connect and answer).
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct OrderSms {
    ctx: JobContext,
    provider: Option<Arc<Provider>>,
}

/// The Messages API as configured, and its circuit.
struct Provider {
    url: String,
    from: String,
    /// `(account_sid, auth_token)`.
    auth: Option<(String, String)>,
    circuit: Circuit,
}

impl OrderSms {
    pub fn new(ctx: JobContext) -> Self {
        let sms = &ctx.settings.sms;
        let provider = sms.provider_url.as_ref().map(|url| {
            let circuit = ctx.breakers.get("sms").unwrap_or_else(|| {
                ctx.breakers
                    .register("sms", ctx.settings.breakers.breaker())
            });
            Arc::new(Provider {
                url: url.clone(),
                from: sms.from.clone().unwrap_or_default(),
                auth: sms.account_sid.clone().map(|sid| {
                    let token = sms.auth_token.as_ref().map(|t| t.expose().to_owned());
                    (sid, token.unwrap_or_default())
                }),
                circuit,
            })
        });
        Self { ctx, provider }
    }
}

/// One message, ready to go.
struct Message {
    /// The job's id: the message's stable id.
    id: Uuid,
    event: String,
    to: String,
    body: String,
}

impl JobRunner for OrderSms {
    fn run(&self, job: ClaimedJob) -> LocalBoxFuture<'static, Result<(), JobFailure>> {
        let ctx = self.ctx.clone();
        let provider = self.provider.clone();
        Box::pin(async move {
            let event: String = field(&job, "event")?;
            let order_id: Uuid = field(&job, "order_id")?;
            let merchant_id = job
                .merchant_id
                .ok_or_else(|| JobFailure::Permanent("SMS job without merchant".into()))?;
            let loaded = ctx.db.run(Load { order_id }).await.map_err(retry)?;
            let Some((_, store, order)) = loaded.filter(|(m, _, _)| *m == merchant_id) else {
                return Err(JobFailure::Permanent(format!("order {order_id} not found")));
            };
            let Some(to) = order.customer_phone.clone() else {
                // No number to write to (not written for such orders; harmless if it were).
                return Ok(());
            };
            let message = Message {
                id: job.id,
                body: compose(&store, &order, &event),
                event,
                to,
            };
            match provider {
                Some(provider) => send(&provider, &message).await,
                None => {
                    let dir = ctx.settings.sms.outbox_dir.clone();
                    actix_web::rt::task::spawn_blocking(move || write_file(&dir, &message))
                        .await
                        .map_err(|e| JobFailure::Retry(format!("the blocking pool: {e}")))?
                        .map_err(|e| JobFailure::Retry(format!("writing the SMS file: {e}")))
                }
            }
        })
    }
}

/// `POST`s `message` to the provider behind its circuit.
async fn send(provider: &Provider, message: &Message) -> Result<(), JobFailure> {
    let call = provider.circuit.try_call().map_err(|open| {
        JobFailure::Deferred(
            open.retry_after,
            "the SMS provider's circuit is open".into(),
        )
    })?;
    let tls = tls().map_err(|e| JobFailure::Retry(format!("TLS set-up: {e}")))?;
    let client = awc::Client::builder()
        .connector(
            awc::Connector::new()
                .rustls_0_23(tls)
                .timeout(PROVIDER_TIMEOUT),
        )
        .timeout(PROVIDER_TIMEOUT)
        .disable_redirects()
        .finish();
    let mut request = client
        .post(provider.url.as_str())
        .insert_header(("Idempotency-Key", message.id.to_string()))
        .insert_header(("User-Agent", "Rampart-SMS/1"));
    if let Some((user, password)) = &provider.auth {
        request = request.basic_auth(user, password);
    }
    let form = [
        ("To", message.to.as_str()),
        ("From", provider.from.as_str()),
        ("Body", message.body.as_str()),
    ];
    match request.send_form(&form).await {
        Ok(response) if response.status().is_success() => {
            call.succeeded();
            Ok(())
        }
        Ok(response) => {
            let status = response.status();
            if status.is_server_error() || status.as_u16() == 429 {
                call.failed();
            } else {
                // The provider answers: its circuit is fine, this message is not.
                call.succeeded();
            }
            Err(JobFailure::Retry(format!(
                "the SMS provider answered {status}"
            )))
        }
        Err(e) => {
            call.failed();
            Err(JobFailure::Retry(format!("the SMS provider: {e}")))
        }
    }
}

/// The text of the SMS about `event` of `order` at `store`.
fn compose(store: &str, order: &Order, event: &str) -> String {
    match event {
        "order.created" => format!(
            "{store}: your order #{} is confirmed. Total {}.{:02} {}.",
            order.number,
            order.total_cents / 100,
            (order.total_cents % 100).abs(),
            order.currency
        ),
        other => format!(
            "{store}: your order #{} is now {}.",
            order.number,
            other.trim_start_matches("order.")
        ),
    }
}

/// Writes `message` as `<job id>.sms` under `dir`, whole or not at all: a temporary name, then
/// a rename over what a repeated run wrote before (as `email.rs` writes its `.eml` files).
fn write_file(dir: &Path, message: &Message) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let name = format!("{}.sms", message.id);
    let text = format!(
        "Id: {}\nEvent: {}\nTo: {}\n\n{}\n",
        message.id, message.event, message.to, message.body
    );
    let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// The order, with its merchant's id and name (`None`: no such order).
struct Load {
    order_id: Uuid,
}

impl DbCommand for Load {
    type Output = Option<(Uuid, String, Order)>;

    async fn run(self, conn: &mut Conn) -> Result<Self::Output, DbError> {
        let rows = orders::get_many(&**conn, &[self.order_id]).await?;
        Ok(rows.decode()?.into_iter().next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(total_cents: i64) -> Order {
        Order {
            id: Uuid::now_v7(),
            number: 42,
            status: "pending".into(),
            customer_email: "a@b.co".into(),
            customer_name: None,
            customer_phone: Some("+4915112345678".into()),
            items: Vec::new(),
            total_cents,
            currency: "EUR".into(),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn the_confirmation_names_the_store_the_number_and_the_total_and_a_change_its_status() {
        assert_eq!(
            compose("Lamps", &order(3998), "order.created"),
            "Lamps: your order #42 is confirmed. Total 39.98 EUR."
        );
        assert_eq!(
            compose("Lamps", &order(3998), "order.shipped"),
            "Lamps: your order #42 is now shipped."
        );
    }

    #[test]
    fn a_message_file_is_named_by_its_id_and_a_repeat_replaces_it_leaving_nothing_else() {
        let dir = std::env::temp_dir().join(format!("rampart-sms-{}", Uuid::new_v4()));
        let mut message = Message {
            id: Uuid::now_v7(),
            event: "order.created".into(),
            to: "+4915112345678".into(),
            body: "first".into(),
        };
        write_file(&dir, &message).unwrap();
        message.body = "second".into();
        write_file(&dir, &message).unwrap();
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [format!("{}.sms", message.id).as_str()]);
        let text = std::fs::read_to_string(dir.join(format!("{}.sms", message.id))).unwrap();
        assert!(text.contains("To: +4915112345678\n"), "{text}");
        assert!(text.ends_with("\n\nsecond\n"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
