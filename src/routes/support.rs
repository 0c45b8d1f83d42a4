//! What several handlers share: path ids and entity tags.

use crate::error::ApiError;
use actix_web::http::header::{self, HeaderMap};
use uuid::Uuid;

/// A path id: anything that is not a UUID names nothing here.
pub fn path_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound)
}

fn tags(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(|t| t.trim().trim_start_matches("W/"))
}

/// `If-None-Match` names the current tag (or `*`): the client's copy is fresh.
pub fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| tags(v).any(|t| t == "*" || t == etag))
}

/// What `If-Match` asks of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// No header: the write is unconditional.
    Absent,
    /// `*`: any current version of an existing resource.
    Any,
    /// The versions named by the strong tags of the list (RFC 9110 strong comparison: a weak
    /// tag, or a tag that is not one of ours, matches nothing).
    Versions(Vec<i64>),
}

impl IfMatch {
    pub fn parse(headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut values = headers.get_all(header::IF_MATCH).peekable();
        if values.peek().is_none() {
            return Ok(IfMatch::Absent);
        }
        let mut versions = Vec::new();
        for value in values {
            let value = value.to_str().map_err(|_| ApiError::PreconditionFailed)?;
            for tag in value.split(',').map(str::trim) {
                if tag == "*" {
                    return Ok(IfMatch::Any);
                }
                if let Some(v) = tag
                    .strip_prefix("\"v")
                    .and_then(|t| t.strip_suffix('"'))
                    .and_then(|n| n.parse::<i64>().ok())
                {
                    versions.push(v);
                }
            }
        }
        Ok(IfMatch::Versions(versions))
    }

    pub fn is_absent(&self) -> bool {
        *self == IfMatch::Absent
    }

    /// The versions a conditional write may happen at; `None` for any.
    pub fn versions(self) -> Option<Vec<i64>> {
        match self {
            IfMatch::Absent | IfMatch::Any => None,
            IfMatch::Versions(v) => Some(v),
        }
    }
}
