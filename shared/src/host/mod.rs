//! The two hosts' wiring, side by side: `embedded` puts the SQLite adapters behind the ports and
//! serves the router with `causeflow serve`'s listener; `lambda` puts the AWS adapters behind the
//! same ports for the Lambda functions. Everything else (router, normalisers, dedup decision,
//! triage) is the same code (docs/architecture.md#two-hosts-one-codebase).

#[cfg(feature = "embedded")]
pub mod embedded;
#[cfg(feature = "aws")]
pub mod lambda;
