//! Every error answer of the API, and its one mapping to an HTTP status and an RFC 9457
//! `application/problem+json` body with a stable `code` and a `detail` that says what to fix.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

use crate::error::StoreError;
use crate::model::AlertResult;
use crate::normalize::PayloadError;

/// An error answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No API key where the request could carry one; names where to put it.
    #[error("no API key in {0}")]
    MissingApiKey(&'static str),
    #[error("missing signature: {0}")]
    MissingSignature(String),
    #[error("invalid API key")]
    InvalidApiKey,
    #[error("signature mismatch: {0}")]
    SignatureMismatch(String),
    #[error("stale timestamp: {0}")]
    StaleTimestamp(String),
    #[error("unknown provider {0:?}")]
    UnknownProvider(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
    #[error("payload too large")]
    PayloadTooLarge { limit: usize },
    /// The request (its body included) did not arrive within the server's request timeout.
    #[error("request timeout")]
    RequestTimeout(Duration),
    /// The request carries more alerts than one request may (413).
    #[error("too many alerts: {count} > {limit}")]
    TooManyAlerts { count: usize, limit: usize },
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("rate limited")]
    RateLimited { retry_after: Duration },
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Another request is admitting the same alert (503 with the lease's remaining time).
    #[error("alert in flight")]
    InFlight { retry_after: Duration },
    /// A 401 that asks for HTTP Basic credentials (SNS sends them only after this challenge).
    #[error("credentials required: {0}")]
    Challenge(Box<ApiError>),
    /// The request is malformed in a way that is not about the payload's fields (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A management API request without a console session (401).
    #[error("not signed in")]
    NotSignedIn,
    /// A state-changing management request without the session's CSRF token, or from another
    /// origin (403).
    #[error("csrf token rejected")]
    CsrfRejected,
    /// Every alert of the request duplicates an open incident (409).
    #[error("duplicate")]
    Duplicate { alerts: Vec<AlertResult> },
}

/// How long a sender should wait before retrying after a 503.
const UNAVAILABLE_RETRY_SECS: u64 = 5;

impl From<PayloadError> for ApiError {
    fn from(e: PayloadError) -> Self {
        let expected = e.expected.strip_prefix("expected ").unwrap_or(&e.expected);
        ApiError::InvalidPayload(format!("field `{}`: expected {expected}", e.field))
    }
}

impl From<crate::ingest::IngestError> for ApiError {
    fn from(e: crate::ingest::IngestError) -> Self {
        use crate::ingest::IngestError as E;
        match e {
            E::MissingSignature(d) => ApiError::MissingSignature(d),
            E::SignatureMismatch(d) => ApiError::SignatureMismatch(d),
            E::StaleTimestamp(d) => ApiError::StaleTimestamp(d),
            E::InvalidBody(d) => ApiError::InvalidPayload(d),
            E::Payload(p) => p.into(),
            E::Sns(d) => ApiError::BadRequest(d),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(what),
            StoreError::InFlight { retry_after } => ApiError::InFlight { retry_after },
            // The details of a storage failure are logged, not shown to senders.
            StoreError::Unavailable(_) | StoreError::Invalid(_) => ApiError::Unavailable(
                "the alert store is temporarily unavailable; nothing was recorded, retry shortly"
                    .into(),
            ),
        }
    }
}

impl ApiError {
    /// Status, stable code, short title and the detail for the body.
    fn parts(&self) -> (StatusCode, &'static str, &'static str, String) {
        use ApiError::*;
        match self {
            MissingApiKey(h) => (
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "Missing API key",
                format!("No API key was sent: send the key created with `causeflow keys create` in {h}."),
            ),
            MissingSignature(d) => (StatusCode::UNAUTHORIZED, "missing_signature", "Missing signature", d.clone()),
            InvalidApiKey => (
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "Invalid API key",
                "The API key is not valid for this tenant: check the key and the tenant id in the URL.".into(),
            ),
            SignatureMismatch(d) => (StatusCode::UNAUTHORIZED, "signature_mismatch", "Signature mismatch", d.clone()),
            StaleTimestamp(d) => (StatusCode::UNAUTHORIZED, "stale_timestamp", "Stale timestamp", d.clone()),
            UnknownProvider(p) => (
                StatusCode::NOT_FOUND,
                "unknown_provider",
                "Unknown provider",
                format!(
                    "Unknown provider {p:?}: use one of {}.",
                    crate::model::Provider::ALL.map(|p| p.as_str()).join(", ")
                ),
            ),
            NotFound(what) => (StatusCode::NOT_FOUND, "not_found", "Not found", what.clone()),
            InvalidPayload(d) => (StatusCode::BAD_REQUEST, "invalid_payload", "Invalid payload", d.clone()),
            PayloadTooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
                format!("The body is larger than {limit} bytes: send fewer alerts per request."),
            ),
            RequestTimeout(limit) => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "Request timeout",
                format!(
                    "The request did not arrive within {} s; nothing was recorded. Send the whole body at once.",
                    limit.as_secs_f64()
                ),
            ),
            TooManyAlerts { count, limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_alerts",
                "Too many alerts",
                format!(
                    "This request carries {count} alerts; at most {limit} are accepted per request. Nothing was \
                     recorded. Lower the sender's batch (Grafana: the contact point's Max alerts; Alertmanager: \
                     max_alerts) to {limit} or fewer, or raise the server's --max-alerts."
                ),
            ),
            UnsupportedMediaType(ct) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
                format!("Content-Type {ct:?} is not accepted: send the alert as JSON (Content-Type: application/json)."),
            ),
            InvalidQuery(d) => (StatusCode::BAD_REQUEST, "invalid_query", "Invalid query", d.clone()),
            RateLimited { retry_after } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Rate limited",
                format!(
                    "This tenant is over its request rate: retry after {} second(s).",
                    retry_after.as_secs().max(1)
                ),
            ),
            Unavailable(d) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", d.clone()),
            InFlight { retry_after } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                format!(
                    "Another request is admitting this alert and has not finished; retry after {} s \
                     (the retry then either joins its incident or takes over).",
                    retry_secs(*retry_after)
                ),
            ),
            Challenge(inner) => inner.parts(),
            NotSignedIn => (
                StatusCode::UNAUTHORIZED,
                "not_signed_in",
                "Not signed in",
                "The management API takes a console session: sign in with a link from \
                 `causeflow console-link --tenant <tenant>`. API keys do not open it."
                    .into(),
            ),
            CsrfRejected => (
                StatusCode::FORBIDDEN,
                "csrf_rejected",
                "CSRF token rejected",
                "Send the session's CSRF token (the console page's csrf-token meta tag) in \
                 X-CSRF-Token, from the console's own origin."
                    .into(),
            ),
            BadRequest(d) => (StatusCode::BAD_REQUEST, "invalid_sns_message", "Invalid SNS message", d.clone()),
            Duplicate { .. } => (
                StatusCode::CONFLICT,
                "duplicate",
                "Duplicate alert",
                "Every alert in this request duplicates an open incident; nothing new was created.".into(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title, detail) = self.parts();
        let mut body = Problem {
            kind: format!("urn:causeflow:problem:{code}"),
            title: title.to_owned(),
            status: status.as_u16(),
            code: code.to_owned(),
            detail,
            incident_ids: None,
            alerts: None,
        };
        if let ApiError::Duplicate { alerts } = &self {
            body.incident_ids = Some(
                alerts
                    .iter()
                    .filter_map(|a| a.incident_id.clone())
                    .collect(),
            );
            body.alerts = Some(alerts.clone());
        }
        let body = serde_json::to_string(&body).expect("a problem serialises");
        let mut resp = (status, problem_json(body)).into_response();
        resp.extensions_mut()
            .insert(super::observe::AnswerOutcome(code));
        let retry_after = match &self {
            ApiError::RateLimited { retry_after } => Some(retry_after.as_secs().max(1)),
            ApiError::Unavailable(_) => Some(UNAVAILABLE_RETRY_SECS),
            ApiError::InFlight { retry_after } => Some(retry_secs(*retry_after)),
            _ => None,
        };
        if let ApiError::Challenge(_) = &self {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"CauseFlow\""),
            );
        }
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Whole seconds to wait, rounded up, at least one.
fn retry_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

fn problem_json(body: String) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        )],
        body,
    )
}

/// Every error answer's body: RFC 9457 problem details with a stable `code`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// `urn:causeflow:problem:{code}`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    /// The HTTP status, repeated.
    pub status: u16,
    /// Stable: `missing_api_key`, `invalid_api_key`, `signature_mismatch`, `invalid_payload`,
    /// `duplicate`, `rate_limited`, `unavailable`, … (docs/contract.md#answers).
    pub code: String,
    /// What to fix.
    pub detail: String,
    /// For `duplicate`: the open incidents the request's alerts duplicate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident_ids: Option<Vec<String>>,
    /// For `duplicate`: each alert of the request and the incident it duplicates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Vec<AlertResult>>,
}
