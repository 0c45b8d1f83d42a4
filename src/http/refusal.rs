//! A refusal that keeps its connection. actix-http closes a connection whose request body was
//! left unread when the answer went out (it cannot tell where the next request starts), so a
//! 429 or 503 answered before the body made the client open a new connection (a TCP and, in
//! production, a TLS handshake) for its next request. Under overload that doubled a refusal's
//! cost on both sides: the `overload` bench opened one connection per refusal (43,201 for 43,194
//! refusals at 10×). A small body already on its way is read and dropped first; anything else
//! (larger, slower, or waiting for `100 Continue`) is left, and its connection closes as before.

use actix_web::dev::ServiceRequest;
use actix_web::http::header::{CONTENT_LENGTH, EXPECT};
use actix_web::HttpMessage;
use futures_util::StreamExt;
use std::time::Duration;

/// The most a refusal reads to keep its connection.
const AT_MOST: u64 = 64 * 1024;
/// How long a refusal waits for the rest of a body: the body of a small request normally
/// arrives with its head, and a refusal must stay cheap.
const WAIT: Duration = Duration::from_millis(2);

/// Reads and drops `req`'s body when it is small and already arriving, so that the refusal
/// about to be sent leaves the connection open.
pub async fn discard_small_body(req: &mut ServiceRequest) {
    let length = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if !matches!(length, Some(1..=AT_MOST)) || req.headers().contains_key(EXPECT) {
        return;
    }
    let mut payload = req.take_payload();
    let _ = actix_rt::time::timeout(WAIT, async {
        while let Some(Ok(_)) = payload.next().await {}
    })
    .await;
}
