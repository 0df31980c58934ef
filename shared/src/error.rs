//! Errors of the library's ports. HTTP status mapping happens once, in `http::problem`.

/// A port's backing store (SQLite, DynamoDB, SQS, SNS) failed or refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or refused the write: the caller may retry later (503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Another request holds the alert's key under a live lease: retry after `retry_after`.
    #[error("alert in flight; retry after {retry_after:?}")]
    InFlight { retry_after: std::time::Duration },
    /// The named record does not exist (management commands).
    #[error("not found: {0}")]
    NotFound(String),
    /// The request to the store was invalid (management commands).
    #[error("invalid: {0}")]
    Invalid(String),
}

#[cfg(feature = "embedded")]
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Unavailable(format!("sqlite: {e}"))
    }
}
