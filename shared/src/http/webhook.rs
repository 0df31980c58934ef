//! `POST /v1/webhooks/{tenantId}/{provider}`: authenticate, verify the signature over the raw
//! bytes, parse, normalise, and hand the alerts to the ledger (SPEC §2-§5).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Value};
use tracing::{info, instrument};

use super::{ApiError, AppState};
use crate::auth::{check_timestamp, hash_api_key, verify, SignatureError, TimestampError};
use crate::model::{Outcome, Provider};
use crate::normalize::{is_oncall_payload, normalize, Context, Normalized};
use crate::ports::KeyRecord;

const API_KEY: &str = "x-api-key";
const SIGNATURE: &str = "x-webhook-signature";
const GRAFANA_SIGNATURE: &str = "x-grafana-alerting-signature";
const TIMESTAMPS: [&str; 2] = [
    "x-webhook-timestamp",
    "x-grafana-alerting-signature-timestamp",
];
const SENTRY_SIGNATURE: &str = "sentry-hook-signature";
const SENTRY_RESOURCE: &str = "sentry-hook-resource";

/// A header's value, with empty values treated as absent (Datadog's page tells users to leave
/// `X-Webhook-Signature` blank).
fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// What the signature check established.
enum Signed {
    Verified,
    /// No signature header; allowed only for some providers and payload shapes.
    Absent,
}

#[instrument(skip_all, fields(tenant = %tenant, provider = %provider))]
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

    let key = authenticate(&app, &headers, &tenant).await?;
    app.limiter
        .check(&tenant)
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;

    let bytes = Limited::new(body, app.max_body)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::PayloadTooLarge {
                    limit: app.max_body,
                }
            } else {
                ApiError::InvalidPayload(format!("the body could not be read: {e}"))
            }
        })?
        .to_bytes();

    let signed = check_signature(provider, &headers, &bytes, &key)?;
    let root = parse_object(&bytes)?;
    if let Signed::Absent = signed {
        let unsigned_ok = match provider {
            Provider::Datadog => true,
            Provider::Grafana => is_oncall_payload(&root),
            _ => false,
        };
        if !unsigned_ok {
            return Err(missing_signature(provider));
        }
    }

    let ctx = Context {
        sentry_resource: header_str(&headers, SENTRY_RESOURCE),
    };
    let alerts = match normalize(provider, &root, ctx)? {
        Normalized::NotAnAlert { what } => {
            info!(%what, "acknowledged a non-alert event");
            return Ok((
                StatusCode::OK,
                Json(json!({
                    "tenantId": tenant, "provider": provider, "alerts": [],
                    "detail": format!("{what} acknowledged; it is not an alert, so nothing was created."),
                })),
            )
                .into_response());
        }
        Normalized::Alerts(a) => a,
    };

    let results = app
        .ledger
        .admit(&tenant, provider, &alerts, chrono::Utc::now())
        .await
        .inspect_err(|e| tracing::error!(error = %e, "ledger admit failed"))?;

    let count = |o: Outcome| results.iter().filter(|r| r.outcome == o).count();
    info!(
        alerts = results.len(),
        created = count(Outcome::Created),
        duplicate = count(Outcome::Duplicate),
        resolved = count(Outcome::Resolved),
        "webhook accepted"
    );
    let status = if results.iter().any(|r| {
        matches!(
            r.outcome,
            Outcome::Created | Outcome::Resolved | Outcome::Ignored
        )
    }) {
        StatusCode::ACCEPTED
    } else if results.iter().any(|r| r.outcome == Outcome::Duplicate) {
        return Err(ApiError::Duplicate { alerts: results });
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "tenantId": tenant, "provider": provider, "alerts": results })),
    )
        .into_response())
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

async fn authenticate(
    app: &AppState,
    headers: &HeaderMap,
    tenant: &str,
) -> Result<KeyRecord, ApiError> {
    let key = header_str(headers, API_KEY).ok_or(ApiError::MissingApiKey("X-API-Key"))?;
    match app.directory.key_by_hash(&hash_api_key(key)).await? {
        // One answer for unknown, revoked and other tenants' keys: do not reveal which.
        Some(k) if !k.revoked && k.tenant_id == tenant => Ok(k),
        _ => Err(ApiError::InvalidApiKey),
    }
}

fn missing_signature(provider: Provider) -> ApiError {
    ApiError::MissingSignature(match provider {
        Provider::Sentry => "The X-Webhook-Signature header (HMAC-SHA256 of the body with the webhook secret) \
            or Sentry's own Sentry-Hook-Signature header is missing."
            .into(),
        Provider::Grafana => "The X-Webhook-Signature header is missing: in the contact point's HMAC Signature \
            settings set the secret to your webhook secret and the header to X-Webhook-Signature."
            .into(),
        _ => "The X-Webhook-Signature header is missing: send the hex HMAC-SHA256 of the raw body, keyed with \
            the webhook secret (`causeflow sign` prints it)."
            .into(),
    })
}

fn mismatch(e: SignatureError, what: &str) -> ApiError {
    ApiError::SignatureMismatch(match e {
        SignatureError::Malformed => format!("{what} is not a hex HMAC-SHA256 (64 hex digits, optionally sha256=)."),
        SignatureError::Mismatch => format!(
            "{what} does not match the body: sign the exact raw bytes with the key's current webhook secret."
        ),
    })
}

/// Verifies whichever signature the request carries, over the raw bytes, before any parsing.
fn check_signature(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
    key: &KeyRecord,
) -> Result<Signed, ApiError> {
    let secrets: Vec<&str> = key.webhook_secrets.iter().map(String::as_str).collect();
    let ours = header_str(headers, SIGNATURE)
        .map(|s| (s, "X-Webhook-Signature"))
        .or_else(|| {
            (provider == Provider::Grafana)
                .then(|| {
                    header_str(headers, GRAFANA_SIGNATURE)
                        .map(|s| (s, "X-Grafana-Alerting-Signature"))
                })
                .flatten()
        });
    if let Some((sig, name)) = ours {
        let ts = TIMESTAMPS.iter().find_map(|h| header_str(headers, h));
        match ts {
            Some(ts) => {
                check_timestamp(ts, chrono::Utc::now().timestamp()).map_err(|e| match e {
                    TimestampError::Malformed => ApiError::StaleTimestamp(
                        "The signature timestamp header is not a Unix time in seconds.".into(),
                    ),
                    TimestampError::Stale(s) => ApiError::StaleTimestamp(format!(
                        "The signature timestamp is {s} s away from the server's clock; at most 300 s are accepted. Check the sender's clock."
                    )),
                })?;
                verify(&secrets, &[ts.as_bytes(), b":", body], sig)
                    .map_err(|e| mismatch(e, name))?;
            }
            None => verify(&secrets, &[body], sig).map_err(|e| mismatch(e, name))?,
        }
        return Ok(Signed::Verified);
    }
    if provider == Provider::Sentry {
        if let Some(sig) = header_str(headers, SENTRY_SIGNATURE) {
            let secret = key.sentry_client_secret.as_deref().ok_or_else(|| {
                ApiError::SignatureMismatch(
                    "Sentry-Hook-Signature was sent but no Sentry client secret is registered for this key: \
                     run `causeflow keys set-sentry-secret`."
                        .into(),
                )
            })?;
            verify(&[secret], &[body], sig).map_err(|e| mismatch(e, "Sentry-Hook-Signature"))?;
            return Ok(Signed::Verified);
        }
    }
    Ok(Signed::Absent)
}

/// Parses the body as a JSON object, explaining what is wrong when it is not one.
fn parse_object(bytes: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidPayload(
            "The body is empty: send the alert as a JSON object.".into(),
        ));
    }
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(ApiError::InvalidPayload(format!(
            "The body is not valid UTF-8 (at byte {}): send JSON encoded as UTF-8.",
            e.valid_up_to()
        )));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(ApiError::InvalidPayload(format!(
            "The body is {}, not a JSON object: send one alert notification as a JSON object.",
            match other {
                Value::Array(_) => "a JSON array",
                Value::String(_) => "a JSON string",
                Value::Number(_) => "a JSON number",
                Value::Bool(_) => "a JSON boolean",
                _ => "JSON null",
            }
        ))),
        Err(e) => Err(ApiError::InvalidPayload(format!(
            "The body is not valid JSON ({e}): send the alert as a JSON object."
        ))),
    }
}
