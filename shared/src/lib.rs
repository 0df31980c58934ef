//! CauseFlow alert ingest, the library every host shares: the domain (providers, alerts,
//! incidents), provider normalisers, authentication, the dedup lifecycle, triage policy, the
//! ports storage/queue/dispatch sit behind, the HTTP router, and the embedded SQLite adapters.
//!
//! Hosts stay thin: `causeflow serve` wires [`host::embedded::Embedded`]; the Lambda functions
//! wire the same [`http::router`] and [`triage::Triage`] to AWS adapters ([`host::lambda`]).

pub mod auth;
#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "console")]
pub mod console;
pub mod deadletter;
pub mod dedup;
pub mod error;
pub mod host;
pub mod http;
pub mod ingest;
pub mod model;
pub mod normalize;
pub mod policy;
pub mod ports;
pub mod sns;
#[cfg(feature = "embedded")]
pub mod sqlite;
pub mod telemetry;
#[cfg(all(unix, feature = "embedded", any(test, feature = "test-support")))]
pub mod testing;
pub mod triage;
pub mod validate;

/// Current Unix time in milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
