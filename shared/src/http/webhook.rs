//! `POST /v1/webhooks/{tenantId}/{provider}`: authenticate, verify the signature over the raw
//! bytes, parse, normalise, and hand the alerts to the ledger (docs/contract.md).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;

use super::admission::{admit_charged, read_body};
use super::headers::{api_key, bearer_key, header_str, request_headers, API_KEY};
use super::{ApiError, AppState};
use crate::ingest::verify_and_normalize;
use crate::model::Provider;
use crate::normalize::routing_key;

/// Receive a monitoring tool's webhook.
///
/// Authenticates the request (API key, and the signature the provider requires), verifies the
/// signature over the raw bytes, normalises the provider's payload into alerts, deduplicates
/// each and queues it for triage. The body is the provider's own payload
/// (docs/contract.md#what-identifies-an-alert); `cloudwatch` also takes Amazon SNS deliveries
/// with no headers of ours.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{tenant}/{provider}",
    tag = "webhooks",
    params(
        ("tenant" = String, Path, description = "The tenant id."),
        ("provider" = String, Path, description = "datadog, grafana, cloudwatch, sentry, generic, alertmanager or pagerduty."),
        ("X-API-Key" = Option<String>, Header, description = "The tenant's API key. Also accepted as Authorization: Bearer <key> or HTTP Basic (the key as password), and for pagerduty as the body's routing_key. Not needed for SNS deliveries bound by Basic credentials or an allow-listed topic."),
        ("X-Webhook-Signature" = Option<String>, Header, description = "Hex HMAC-SHA256 of the raw body (or of \"{timestamp}:\" + body) keyed with the webhook secret."),
        ("X-Webhook-Timestamp" = Option<String>, Header, description = "Unix seconds the signature covers; within 5 minutes of the server's clock."),
    ),
    request_body(content = Object, description = "The provider's payload, as the tool sends it.", content_type = "application/json"),
    responses(
        (status = 202, description = "At least one alert queued (or a resolve with nothing open). For pagerduty, PagerDuty's own answer (status, message, dedup_key) for every accepted event, duplicates included.", body = super::openapi::Accepted),
        (status = 200, description = "A sender event that is not an alert, or an SNS (un)subscription confirmation.", body = super::openapi::Acknowledged),
        (status = 400, description = "Malformed body, wrong field types, no usable alert, or a malformed SNS envelope.", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key or signature, or a stale timestamp.", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown provider.", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive in time; nothing was recorded.", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Every alert duplicates an open incident (never for pagerduty).", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 256 KiB, or more alerts than one request may carry.", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON (text/plain is accepted for cloudwatch).", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant is over its rate; see Retry-After.", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Storage unavailable or the alert is being admitted by another request; nothing recorded, retry after Retry-After.", body = super::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn handle(
    State(app): State<Arc<AppState>>,
    Path((tenant, provider)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let provider: Provider = provider
        .parse()
        .map_err(|_| ApiError::UnknownProvider(provider.clone()))?;
    check_content_type(&headers, provider)?;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > app.max_body as u64 {
            return Err(ApiError::PayloadTooLarge {
                limit: app.max_body,
            });
        }
    }

    // Amazon SNS cannot send headers: without a key header, a cloudwatch request must stand on
    // SNS's own signature (docs/contract.md#authentication). Basic credentials are how SNS binds
    // a delivery to the tenant, so they stay on that path.
    if provider == Provider::Cloudwatch
        && header_str(&headers, API_KEY).is_none()
        && bearer_key(&headers).is_none()
    {
        return super::sns::handle(&app, &tenant, &headers, body).await;
    }
    // PagerDuty senders may carry the key only as the body's `routing_key`: that body is read
    // (within the same bounds) before the key is known.
    let (key, bytes) = if provider == Provider::Pagerduty && api_key(&headers).is_none() {
        let bytes = read_body(&app, body).await?;
        let key = routing_key_of(&bytes).ok_or(ApiError::MissingApiKey(
            "the X-API-Key header (or Authorization: Bearer <key>, or the body's routing_key)",
        ))?;
        (super::tenant_key(&app, &tenant, &key).await?, bytes)
    } else {
        let key = super::authenticate(&app, &headers, &tenant).await?;
        (key, read_body(&app, body).await?)
    };
    let normalized = verify_and_normalize(
        provider,
        &request_headers(provider, &headers),
        &bytes,
        &key,
        chrono::Utc::now().timestamp(),
    )?;
    admit_charged(&app, &tenant, provider, normalized).await
}

fn check_content_type(headers: &HeaderMap, provider: Provider) -> Result<(), ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let raw = ct.to_str().unwrap_or("");
    let essence = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let ok = essence.is_empty()
        || essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
        // Amazon SNS posts its JSON envelope as text/plain.
        || (provider == Provider::Cloudwatch && essence == "text/plain");
    if ok {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(raw.to_owned()))
    }
}

/// The `routing_key` of a PagerDuty Events v2 body, if the body is a JSON object with one.
fn routing_key_of(bytes: &[u8]) -> Option<String> {
    match serde_json::from_slice::<serde_json::Value>(bytes).ok()? {
        serde_json::Value::Object(root) => routing_key(&root).map(str::to_owned),
        _ => None,
    }
}
