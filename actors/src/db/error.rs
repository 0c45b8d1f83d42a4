//! The database's failures, typed ([`DbError`], [`ConstraintKind`]) so the HTTP layer maps them
//! without reading text: PostgreSQL's SQLSTATEs, the pool's and admission's errors, each mapped
//! once.

use crate::admission::CallError;
use deadpool_postgres::PoolError;
use std::time::Duration;
use tokio_postgres::error::SqlState;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstraintKind {
    Unique,
    ForeignKey,
    Check,
    NotNull,
    Exclusion,
}

/// Database failures, typed so the HTTP layer maps them without reading text.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database timeout")]
    Timeout,
    #[error("database actor overloaded")]
    Overloaded,
    /// PostgreSQL's circuit is open: nothing was sent.
    #[error("database circuit open for {retry_after:?} more")]
    CircuitOpen { retry_after: Duration },
    #[error("constraint {name} violated")]
    Constraint { name: String, kind: ConstraintKind },
    /// Serialization failure or deadlock: safe to retry the whole transaction.
    #[error("transaction conflict: {0}")]
    Conflict(String),
    /// The server refused a value the client sent (text it cannot store, such as a NUL byte).
    #[error("value refused by the database: {0}")]
    InvalidInput(String),
    #[error("database error: {0}")]
    Other(String),
    #[error("database command panicked")]
    Internal,
}

impl DbError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, DbError::Conflict(_))
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            // No server error: either the connection broke or could not be made, or the
            // client refused a value (a type mismatch: a bug, not an outage).
            let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
            return if e.is_closed() || io || e.to_string().starts_with("error connecting") {
                DbError::Unavailable(e.to_string())
            } else {
                DbError::Other(e.to_string())
            };
        };
        let code = db.code();
        let constraint = |kind| DbError::Constraint {
            name: db.constraint().unwrap_or_default().to_owned(),
            kind,
        };
        if *code == SqlState::UNIQUE_VIOLATION {
            constraint(ConstraintKind::Unique)
        } else if *code == SqlState::FOREIGN_KEY_VIOLATION {
            constraint(ConstraintKind::ForeignKey)
        } else if *code == SqlState::CHECK_VIOLATION {
            constraint(ConstraintKind::Check)
        } else if *code == SqlState::NOT_NULL_VIOLATION {
            constraint(ConstraintKind::NotNull)
        } else if *code == SqlState::EXCLUSION_VIOLATION {
            constraint(ConstraintKind::Exclusion)
        } else if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
        {
            DbError::Conflict(db.message().to_owned())
        } else if *code == SqlState::CHARACTER_NOT_IN_REPERTOIRE
            || *code == SqlState::UNTRANSLATABLE_CHARACTER
        {
            DbError::InvalidInput(db.message().to_owned())
        } else if *code == SqlState::QUERY_CANCELED
            || *code == SqlState::LOCK_NOT_AVAILABLE
            || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
        {
            DbError::Timeout
        } else if code.code().starts_with("08")
            || code.code().starts_with("57P")
            || *code == SqlState::TOO_MANY_CONNECTIONS
        {
            DbError::Unavailable(db.message().to_owned())
        } else {
            DbError::Other(format!("{}: {}", code.code(), db.message()))
        }
    }
}

impl From<PoolError> for DbError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => DbError::Timeout,
            PoolError::Timeout(_) => DbError::Unavailable("connecting timed out".into()),
            PoolError::Backend(e) => DbError::from(e),
            PoolError::Closed => DbError::Unavailable("pool closed".into()),
            other => DbError::Other(other.to_string()),
        }
    }
}

impl From<CallError> for DbError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Overloaded => DbError::Overloaded,
            CallError::Timeout => DbError::Timeout,
            CallError::Unavailable => DbError::Unavailable("db actor not running".into()),
            CallError::Panicked => DbError::Internal,
        }
    }
}
