//! A refusal that keeps its connection. actix-http closes a connection whose request body was
//! left unread when the answer went out (it cannot tell where the next request starts), so a
//! 429 or 503 answered before the body made the client open a new connection (a TCP and, in
//! production, a TLS handshake) for its next request. Under overload that doubled a refusal's
//! cost on both sides: the `overload` bench opened one connection per refusal (43,201 for 43,194
//! refusals at 10×). So a refusal first drops a small body that has already arrived with its
//! head; a body still on the network (or waiting for `100 Continue`) is not waited for, and its
//! connection closes as before. A refusal never waits on the client.

use actix_web::body::EitherBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{CONTENT_LENGTH, EXPECT};
use actix_web::{HttpMessage, HttpResponse};
use futures_util::Stream;
use std::pin::Pin;
use std::task::Poll;

/// The most a refusal reads to keep its connection.
const AT_MOST: u64 = 64 * 1024;

/// Answers `req` with `response`, a refusal made before any handler ran (429, 503), keeping the
/// connection when the body allows.
pub async fn refuse<B>(
    mut req: ServiceRequest,
    response: HttpResponse,
) -> ServiceResponse<EitherBody<B>> {
    discard_small_body(&mut req).await;
    req.into_response(response).map_into_right_body()
}

/// Drops `req`'s body if it is small and already read from the socket.
async fn discard_small_body(req: &mut ServiceRequest) {
    let length = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if !matches!(length, Some(1..=AT_MOST)) || req.headers().contains_key(EXPECT) {
        return;
    }
    let mut payload = req.take_payload();
    let mut first = true;
    std::future::poll_fn(|cx| loop {
        match Pin::new(&mut payload).poll_next(cx) {
            Poll::Ready(Some(Ok(_))) => continue,
            Poll::Ready(_) => return Poll::Ready(()),
            // actix polls a request's future once before it decodes the body that came with the
            // head, and again in the same turn after: the second poll sees all that arrived.
            Poll::Pending if first => {
                first = false;
                return Poll::Pending;
            }
            Poll::Pending => return Poll::Ready(()),
        }
    })
    .await;
}
