//! A JSON body extractor that names the offending field: 415 for a body that is not JSON, 413
//! past the body limit (checked against `Content-Length` before reading, then while streaming),
//! 400 for malformed JSON, 422 with the field's path for well-formed JSON of the wrong shape,
//! 503 when the body has not arrived by the request's deadline.

use crate::error::{ApiError, FieldError};
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

pub struct Json<T>(pub T);

fn is_json(req: &HttpRequest) -> bool {
    req.mime_type().ok().flatten().is_some_and(|m| {
        m.type_() == mime_type::APPLICATION
            && (m.subtype() == mime_type::JSON || m.suffix() == Some(mime_type::JSON))
    })
}

use actix_web::mime as mime_type;

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let json = is_json(req);
        let body = Bytes::from_request(req, payload);
        Box::pin(async move {
            if !json {
                return Err(ApiError::UnsupportedMediaType);
            }
            // A body still arriving at the request's deadline is abandoned like any other work.
            let body = match rampart_actors::current_deadline() {
                Some(deadline) => tokio::time::timeout_at(deadline, body).await.map_err(|_| {
                    ApiError::Unavailable {
                        detail: "the request body did not arrive before the request's deadline"
                            .into(),
                        retry_after: 1,
                    }
                })?,
                None => body.await,
            };
            let body = body.map_err(|e| {
                if e.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::bad_request("the request body could not be read")
                }
            })?;
            parse(&body).map(Json)
        })
    }
}

/// Parses a JSON document, naming the field at fault. Syntax comes first: a document that is
/// not JSON at all is a 400 even when the part before its error names an unknown field.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        return Err(ApiError::bad_request(format!(
            "malformed JSON: {}",
            strip_position(&e.to_string())
        )));
    }
    // Every body of this API is an object; serde would also take a struct from an array.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::Validation(vec![FieldError::new(
            "body",
            "must be a JSON object",
        )]));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = strip_position(&inner.to_string());
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = match missing_field(&message) {
                    Some(f) => join(&path, f),
                    None => path,
                };
                ApiError::Validation(vec![FieldError::new(field, message)])
            }
            _ => ApiError::bad_request(format!("malformed JSON: {message}")),
        }
    })?;
    de.end().map_err(|_| {
        ApiError::bad_request("malformed JSON: trailing characters after the document")
    })?;
    Ok(value)
}

fn strip_position(message: &str) -> String {
    message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_owned()
}

fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

fn join(path: &str, field: &str) -> String {
    if path == "." || path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}
