//! The pure part of ingest: verify the signature over the raw bytes, parse, and normalise. No
//! I/O, so it is what the benchmark measures and what every host shares.

use http::HeaderMap;
use serde_json::Value;

use crate::auth::{check_timestamp, verify, SignatureError, TimestampError};
use crate::http::ApiError;
use crate::model::Provider;
use crate::normalize::{is_oncall_payload, normalize, Context, Normalized};
use crate::ports::KeyRecord;

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
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Verifies, parses and normalises one authenticated request's body. `now_unix` is the clock
/// for signature timestamps.
pub fn verify_and_normalize(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
    key: &KeyRecord,
    now_unix: i64,
) -> Result<Normalized, ApiError> {
    let signed = check_signature(provider, headers, body, key, now_unix)?;
    let root = parse_object(body)?;
    if !signed {
        // Only senders that cannot sign may skip the signature (docs/contract.md#authentication).
        let unsigned_ok = match provider {
            Provider::Datadog => true,
            Provider::Grafana => is_oncall_payload(&root),
            _ => false,
        };
        if !unsigned_ok {
            return Err(missing_signature(provider));
        }
    }
    if provider == Provider::Cloudwatch {
        crate::sns::check_type_header(headers, &root)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    let ctx = Context {
        sentry_resource: header_str(headers, SENTRY_RESOURCE),
        signed,
    };
    Ok(normalize(provider, &root, ctx)?)
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
/// `Ok(false)`: no signature header at all.
fn check_signature(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
    key: &KeyRecord,
    now_unix: i64,
) -> Result<bool, ApiError> {
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
                check_timestamp(ts, now_unix).map_err(|e| match e {
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
        return Ok(true);
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
            return Ok(true);
        }
    }
    Ok(false)
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
