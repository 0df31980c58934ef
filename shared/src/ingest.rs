//! The pure part of ingest: verify the signature over the raw bytes, parse, and normalise. No
//! I/O and no HTTP types: the HTTP layer hands over the header values it read
//! ([`RequestHeaders`]) and maps [`IngestError`] to an answer. So it is what the benchmark
//! measures and what every host shares.

use serde_json::Value;

use crate::auth::{check_timestamp, verify, SignatureError, TimestampError};
use crate::model::Provider;
use crate::normalize::{is_oncall_payload, normalize, Context, Normalized, PayloadError};
use crate::ports::KeyRecord;

/// The header values verification and normalisation read (empty values count as absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestHeaders<'a> {
    /// Our HMAC signature, with the name of the header it came in (for messages).
    pub signature: Option<(&'a str, &'static str)>,
    /// The signature timestamp (`X-Webhook-Timestamp` or Grafana's).
    pub timestamp: Option<&'a str>,
    /// `Sentry-Hook-Signature`.
    pub sentry_signature: Option<&'a str>,
    /// `Sentry-Hook-Resource`.
    pub sentry_resource: Option<&'a str>,
    /// `x-amz-sns-message-type`.
    pub sns_message_type: Option<&'a str>,
}

/// Why a request's body was refused; the HTTP layer maps each to its answer.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("missing signature: {0}")]
    MissingSignature(String),
    #[error("signature mismatch: {0}")]
    SignatureMismatch(String),
    #[error("stale timestamp: {0}")]
    StaleTimestamp(String),
    /// The body is not a JSON object (empty, not UTF-8, not JSON).
    #[error("invalid payload: {0}")]
    InvalidBody(String),
    /// A field of the payload is missing or of the wrong type.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// An SNS envelope that contradicts its own headers.
    #[error("invalid SNS message: {0}")]
    Sns(String),
}

/// Verifies, parses and normalises one authenticated request's body. `now_unix` is the clock
/// for signature timestamps.
pub fn verify_and_normalize(
    provider: Provider,
    headers: &RequestHeaders<'_>,
    body: &[u8],
    key: &KeyRecord,
    now_unix: i64,
) -> Result<Normalized, IngestError> {
    let signed = check_signature(provider, headers, body, key, now_unix)?;
    let root = parse_object(body)?;
    if !signed {
        // Only senders that cannot sign may skip the signature (docs/contract.md#authentication).
        let unsigned_ok = match provider {
            Provider::Datadog | Provider::Alertmanager | Provider::Pagerduty => true,
            Provider::Grafana => is_oncall_payload(&root),
            _ => false,
        };
        if !unsigned_ok {
            return Err(missing_signature(provider));
        }
    }
    if provider == Provider::Cloudwatch {
        crate::sns::check_type_header(headers.sns_message_type, &root)
            .map_err(|e| IngestError::Sns(e.to_string()))?;
    }
    let ctx = Context {
        sentry_resource: headers.sentry_resource,
        signed,
    };
    Ok(normalize(provider, &root, ctx)?)
}

fn missing_signature(provider: Provider) -> IngestError {
    IngestError::MissingSignature(match provider {
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

fn mismatch(e: SignatureError, what: &str) -> IngestError {
    IngestError::SignatureMismatch(match e {
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
    headers: &RequestHeaders<'_>,
    body: &[u8],
    key: &KeyRecord,
    now_unix: i64,
) -> Result<bool, IngestError> {
    let secrets: Vec<&str> = key.webhook_secrets.iter().map(String::as_str).collect();
    if let Some((sig, name)) = headers.signature {
        match headers.timestamp {
            Some(ts) => {
                check_timestamp(ts, now_unix).map_err(|e| match e {
                    TimestampError::Malformed => IngestError::StaleTimestamp(
                        "The signature timestamp header is not a Unix time in seconds.".into(),
                    ),
                    TimestampError::Stale(s) => IngestError::StaleTimestamp(format!(
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
        if let Some(sig) = headers.sentry_signature {
            let secret = key.sentry_client_secret.as_deref().ok_or_else(|| {
                IngestError::SignatureMismatch(
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
fn parse_object(bytes: &[u8]) -> Result<serde_json::Map<String, Value>, IngestError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(IngestError::InvalidBody(
            "The body is empty: send the alert as a JSON object.".into(),
        ));
    }
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(IngestError::InvalidBody(format!(
            "The body is not valid UTF-8 (at byte {}): send JSON encoded as UTF-8.",
            e.valid_up_to()
        )));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(IngestError::InvalidBody(format!(
            "The body is {}, not a JSON object: send one alert notification as a JSON object.",
            match other {
                Value::Array(_) => "a JSON array",
                Value::String(_) => "a JSON string",
                Value::Number(_) => "a JSON number",
                Value::Bool(_) => "a JSON boolean",
                _ => "JSON null",
            }
        ))),
        Err(e) => Err(IngestError::InvalidBody(format!(
            "The body is not valid JSON ({e}): send the alert as a JSON object."
        ))),
    }
}
