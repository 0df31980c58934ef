//! What every request goes through first: a request id and its metrics.
//!
//! The id is the caller's `X-Request-Id` when it is a sane token (a proxy's or load balancer's
//! id, so one id follows the request through), otherwise a new UUID. It is returned in the
//! answer's `X-Request-Id`, set on a tracing span around the handler, so every log line of the
//! request carries it, and put in the queued alert, so triage's log lines for that alert carry
//! it too. Nothing of the request but its method, route template, status and provider is
//! recorded.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::model::Provider;
use crate::telemetry;

/// The request id header, taken and returned.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest caller-given request id kept; longer ones are replaced.
pub const MAX_REQUEST_ID: usize = 128;

/// What a handler answered, for the metrics: an outcome like `created`, `duplicate` or a
/// problem code. Handlers put it in the response's extensions.
#[derive(Debug, Clone, Copy)]
pub struct AnswerOutcome(pub &'static str);

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request being handled on this task, if any.
pub fn current_request_id() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

/// A caller's id is kept only if it is short and made of characters ids are made of, so it can
/// neither forge log structure nor carry a payload.
fn acceptable(v: &HeaderValue) -> Option<&str> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= MAX_REQUEST_ID
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b));
    ok.then_some(s)
}

/// The middleware (`axum::middleware::from_fn(observe)`).
pub async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(acceptable)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let provider = route
        .as_deref()
        .filter(|r| r.starts_with("/v1/webhooks/"))
        .map(|_| webhook_provider(req.uri().path()));
    // A webhook's tenant and provider are on this span, so every line of the request names
    // them without a span of the handler's own (at thousands of requests a second each span is
    // a visible cost).
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        tenant = tracing::field::Empty,
        provider = provider.map(tracing::field::display)
    );
    if provider.is_some() {
        span.record(
            "tenant",
            tracing::field::display(webhook_tenant(req.uri().path())),
        );
    }
    let mut resp = CURRENT
        .scope(id.clone(), next.run(req).instrument(span))
        .await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID.clone(), v);
    }
    let status = resp.status().as_u16();
    telemetry::http_answered(route.as_deref().unwrap_or("unmatched"), status);
    if let Some(provider) = provider {
        let outcome = resp
            .extensions()
            .get::<AnswerOutcome>()
            .map_or("unknown", |o| o.0);
        telemetry::webhook_answered(provider, status, outcome, started.elapsed());
    }
    resp
}

/// The tenant segment of a webhook path (`/v1/webhooks/{tenant}/{provider}`), as sent.
fn webhook_tenant(path: &str) -> &str {
    path.rsplit('/').nth(1).unwrap_or_default()
}

/// The provider segment of a webhook path, as a bounded label.
fn webhook_provider(path: &str) -> &'static str {
    path.rsplit('/')
        .next()
        .and_then(|p| p.parse::<Provider>().ok())
        .map_or("unknown", Provider::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sane_ids_are_kept() {
        let ok = |s: &str| acceptable(&HeaderValue::from_str(s).unwrap()).is_some();
        assert!(ok("9f1c2d3e-aaaa-4bbb-8ccc-123456789abc"));
        assert!(ok("Root=1-67891233-abcdef012345678912345678"));
        assert!(!ok(""));
        assert!(!ok("a b"));
        assert!(!ok("id\"},{\"level\":\"error"));
        assert!(!ok(&"a".repeat(MAX_REQUEST_ID + 1)));
        assert!(ok(&"a".repeat(MAX_REQUEST_ID)));
    }

    #[test]
    fn providers_are_a_bounded_set() {
        assert_eq!(webhook_provider("/v1/webhooks/acme/datadog"), "datadog");
        assert_eq!(webhook_provider("/v1/webhooks/acme/%00evil"), "unknown");
    }
}
