//! Response compression (brotli, gzip, deflate, as the client's `Accept-Encoding` prefers), for
//! bodies worth it only.
//!
//! actix's `Compress` encodes every body. A storefront product is 344 bytes: brotli sets up its
//! tables per response (a profile of 15,000 connections at 10,000 requests/s put brotli and its
//! table clearing at a fifth of the server's CPU) to save under 100 bytes. Bodies whose size is
//! known and under [`MIN_BYTES`] go out as they are, like nginx's `gzip_min_length`; streamed and
//! larger bodies are encoded as before. A client whose `Accept-Encoding` allows nothing we have
//! gets the identity encoding rather than a 406: every client can read it.

use actix_http::encoding::Encoder;
use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{
    self, AcceptEncoding, ContentEncoding, Encoding, Header, HeaderValue,
};
use actix_web::middleware::Next;

/// Below this a body is sent uncompressed (one TCP segment either way).
pub const MIN_BYTES: u64 = 1024;

const SUPPORTED: [Encoding; 4] = [
    Encoding::identity(),
    Encoding::brotli(),
    Encoding::gzip(),
    Encoding::deflate(),
];

fn negotiate(req: &ServiceRequest) -> ContentEncoding {
    let Ok(accept) = AcceptEncoding::parse(req) else {
        return ContentEncoding::Identity;
    };
    match accept.negotiate(SUPPORTED.iter()) {
        Some(Encoding::Known(encoding)) => encoding,
        _ => ContentEncoding::Identity,
    }
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let wanted = negotiate(&req);
    let response = next.call(req).await?;
    Ok(response.map_body(|head, body| {
        let encoding = match body.size() {
            BodySize::Sized(n) if n < MIN_BYTES => ContentEncoding::Identity,
            BodySize::None => ContentEncoding::Identity,
            _ if wanted == ContentEncoding::Identity => {
                // The same resource may go out compressed to the next client.
                head.headers_mut()
                    .append(header::VARY, HeaderValue::from_static("accept-encoding"));
                ContentEncoding::Identity
            }
            _ => wanted,
        };
        Encoder::response(encoding, head, body)
    }))
}
