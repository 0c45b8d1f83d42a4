//! `webhook`: `POST` an order event to the merchant's URL, signed, behind the circuit of the
//! destination host.
//!
//! The body is `{"id", "type", "created_at", "data"}` (`data`: the order as it is at delivery).
//! `id` is the event's and stays the same on every retry, so a receiver that saw it already can
//! ignore it. `Rampart-Signature: t=<unix>,v1=<hex hmac-sha256(secret, "<t>.<body>")>`.
//! Redirects are not followed; the connection is made only to addresses the SSRF guard
//! accepted when they were resolved for this very delivery (DNS rebinding).

use crate::domain::webhook_url::{resolve_for_delivery, WebhookUrl};
use crate::jobs::context::{field, retry, JobContext};
use crate::store::orders::{self, Order};
use actix_tls::connect::{Resolve, Resolver};
use awc::error::SendRequestError;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::future::LocalBoxFuture;
use hmac::{Hmac, Mac};
use rampart_actors::{CircuitFor, ClaimedJob, Conn, DbCommand, DbError, JobFailure, JobRunner};
use sha2::Sha256;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use uuid::Uuid;

pub struct Webhook(JobContext);

impl Webhook {
    pub fn new(ctx: JobContext) -> Self {
        Self(ctx)
    }
}

/// Marks a resolver refusal in the connect error, which awc hands back as text.
const REFUSED: &str = "ssrf-guard:";

/// Resolves through the SSRF guard: the client connects only to addresses it accepted.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> LocalBoxFuture<'a, Result<Vec<SocketAddr>, Box<dyn StdError>>> {
        Box::pin(async move {
            resolve_for_delivery(host, port, self.allow_private)
                .await
                .map_err(|e| format!("{REFUSED} {e}").into())
        })
    }
}

/// The TLS configuration of https deliveries: ring's primitives, the safe protocol versions,
/// Mozilla's root certificates; HTTP/1.1 only (one request per delivery).
pub fn tls() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        })
        .clone()
}

/// The signature header of `body` at `t` (unix seconds).
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl JobRunner for Webhook {
    fn run(&self, job: ClaimedJob) -> LocalBoxFuture<'static, Result<(), JobFailure>> {
        let ctx = self.0.clone();
        Box::pin(async move {
            let event_id: Uuid = field(&job, "event_id")?;
            let event: String = field(&job, "type")?;
            let order_id: Uuid = field(&job, "order_id")?;
            let merchant_id = job
                .merchant_id
                .ok_or_else(|| JobFailure::Permanent("webhook job without merchant".into()))?;
            let target = ctx
                .db
                .run(Load {
                    merchant_id,
                    order_id,
                })
                .await
                .map_err(retry)?;
            let Some((url, secret, order)) = target else {
                // The merchant removed its URL (or the order is gone): nothing to deliver.
                return Ok(());
            };
            let allow = ctx.settings.webhooks.allow_private_targets;
            let url = WebhookUrl::parse("webhook_url", &url, allow).map_err(|e| {
                JobFailure::Permanent(format!("webhook URL refused: {}", e.message))
            })?;
            let host = url.host();
            let circuit = match ctx.breakers.get(&format!("webhook:{host}")) {
                Some(c) => c,
                None => ctx
                    .circuits
                    .call(CircuitFor(format!("webhook:{host}")))
                    .await
                    .map_err(|e| JobFailure::Retry(format!("breakers: {e}")))?,
            };
            let created_at: DateTime<Utc> = job.created_at.into();
            let body = serde_json::to_vec(&serde_json::json!({
                "id": event_id,
                "type": event,
                "created_at": created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
                "data": order,
            }))
            .map_err(|e| JobFailure::Permanent(format!("encoding the event: {e}")))?;
            let call = circuit.try_call().map_err(|open| {
                JobFailure::Deferred(open.retry_after, format!("the circuit of {host} is open"))
            })?;
            let timeout = Duration::from_millis(ctx.settings.webhooks.timeout_ms);
            let tls = tls().map_err(|e| JobFailure::Retry(format!("TLS set-up: {e}")))?;
            let connector = awc::Connector::new()
                .rustls_0_23(tls)
                .connector(
                    actix_tls::connect::Connector::new(Resolver::custom(GuardedResolver {
                        allow_private: allow,
                    }))
                    .service(),
                )
                .timeout(timeout);
            let client = awc::Client::builder()
                .connector(connector)
                .timeout(timeout)
                .disable_redirects()
                .finish();
            let sig = signature(&secret, Utc::now().timestamp(), &body);
            let mut request = client.post(url.url().as_str());
            // The merchant's side may continue the trace of the order that caused the event.
            crate::telemetry::inject(request.headers_mut());
            let sent = request
                .insert_header(("Content-Type", "application/json"))
                .insert_header(("Rampart-Signature", sig))
                .insert_header(("Rampart-Event-Id", event_id.to_string()))
                .insert_header(("User-Agent", "Rampart-Webhooks/1"))
                .send_body(body)
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    call.succeeded();
                    Ok(())
                }
                Ok(response) => {
                    let status = response.status();
                    if status.is_server_error() {
                        call.failed();
                    } else {
                        // The host answers: its circuit is fine, this delivery is not.
                        call.succeeded();
                    }
                    let why = if status.is_redirection() {
                        format!("{host} answered {status}; redirects are not followed")
                    } else {
                        format!("{host} answered {status}")
                    };
                    Err(JobFailure::Retry(why))
                }
                Err(SendRequestError::Connect(awc::error::ConnectError::Resolver(e)))
                    if e.to_string().starts_with(REFUSED) =>
                {
                    drop(call);
                    Err(JobFailure::Permanent(format!("delivery refused: {e}")))
                }
                Err(e) => {
                    call.failed();
                    Err(JobFailure::Retry(format!("delivering to {host}: {e}")))
                }
            }
        })
    }
}

/// The merchant's URL and secret, and the order (`None`: no URL or no order).
struct Load {
    merchant_id: Uuid,
    order_id: Uuid,
}

impl DbCommand for Load {
    type Output = Option<(String, String, Order)>;

    async fn run(self, conn: &mut Conn) -> Result<Self::Output, DbError> {
        let row = conn
            .query_opt(
                "SELECT webhook_url, webhook_secret FROM merchants WHERE id = $1 AND webhook_url IS NOT NULL",
                &[&self.merchant_id],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let order = orders::Get {
            merchant_id: self.merchant_id,
            id: self.order_id,
        }
        .run(conn)
        .await?;
        Ok(order.map(|o| (row.get(0), row.get(1), o)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_deliveries_have_a_tls_configuration_with_the_public_roots() {
        let config = tls().expect("TLS configuration");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn the_signature_is_an_hmac_of_the_timestamp_and_the_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_k
        assert_eq!(
            signature("whsec_k", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=a252a4340d8bbbdbac8643a2812cc7d628ad79bfba544bff054ac2fa10f795a2"
        );
    }
}
