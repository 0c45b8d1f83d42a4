//! Blocking work (`pg_ctl`, file I/O) run on the blocking pool, off the async runtime's threads.

pub use actix_web::rt::task::JoinError;

/// Runs `work` on the blocking pool; an error only when it could not run to its end (it
/// panicked, or the runtime is going away).
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, JoinError> {
    actix_web::rt::task::spawn_blocking(work).await
}
