//! Reading request headers: the one place that knows header names, and the values the ingest
//! core needs, handed to it as plain strings.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::HeaderMap;

use crate::ingest::RequestHeaders;
use crate::model::Provider;

pub(crate) const API_KEY: &str = "x-api-key";
const SIGNATURE: &str = "x-webhook-signature";
const GRAFANA_SIGNATURE: &str = "x-grafana-alerting-signature";
const TIMESTAMPS: [&str; 2] = [
    "x-webhook-timestamp",
    "x-grafana-alerting-signature-timestamp",
];
const SENTRY_SIGNATURE: &str = "sentry-hook-signature";
const SENTRY_RESOURCE: &str = "sentry-hook-resource";
pub(crate) const SNS_MESSAGE_TYPE: &str = "x-amz-sns-message-type";
pub(crate) const SNS_RAW_DELIVERY: &str = "x-amz-sns-rawdelivery";

/// A header's value, with empty values treated as absent (Datadog's page tells users to leave
/// `X-Webhook-Signature` blank).
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The values [`crate::ingest::verify_and_normalize`] reads, for a request to `provider`.
/// Grafana's own signature header counts only for Grafana.
pub fn request_headers(provider: Provider, headers: &HeaderMap) -> RequestHeaders<'_> {
    let signature = header_str(headers, SIGNATURE)
        .map(|s| (s, "X-Webhook-Signature"))
        .or_else(|| {
            (provider == Provider::Grafana)
                .then(|| {
                    header_str(headers, GRAFANA_SIGNATURE)
                        .map(|s| (s, "X-Grafana-Alerting-Signature"))
                })
                .flatten()
        });
    RequestHeaders {
        signature,
        timestamp: TIMESTAMPS.iter().find_map(|h| header_str(headers, h)),
        sentry_signature: header_str(headers, SENTRY_SIGNATURE),
        sentry_resource: header_str(headers, SENTRY_RESOURCE),
        sns_message_type: header_str(headers, SNS_MESSAGE_TYPE),
    }
}

/// The API key in `Authorization: Basic`: the password, or the user name when the password is
/// empty (`https://<key>@host` puts it there).
pub(crate) fn basic_key(headers: &HeaderMap) -> Option<String> {
    let value = header_str(headers, http::header::AUTHORIZATION.as_str())?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
    let key = if password.is_empty() { user } else { password };
    (!key.is_empty()).then(|| key.to_owned())
}

/// The API key a request carries in its headers: `X-API-Key`, else `Authorization: Bearer`,
/// else HTTP Basic (for senders that can set only an `Authorization` header, such as
/// Alertmanager's `http_config`).
pub(crate) fn api_key(headers: &HeaderMap) -> Option<String> {
    if let Some(k) = header_str(headers, API_KEY) {
        return Some(k.to_owned());
    }
    bearer_key(headers).or_else(|| basic_key(headers))
}

/// The key in `Authorization: Bearer <key>`.
pub(crate) fn bearer_key(headers: &HeaderMap) -> Option<String> {
    let value = header_str(headers, http::header::AUTHORIZATION.as_str())?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Some(token.trim().to_owned()).filter(|t| !t.is_empty())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        h
    }

    #[test]
    fn api_keys_come_from_any_of_three_headers() {
        assert_eq!(api_key(&with("x-api-key", " k1 ")).as_deref(), Some("k1"));
        assert_eq!(
            api_key(&with("authorization", "Bearer k2")).as_deref(),
            Some("k2")
        );
        let basic = format!("Basic {}", STANDARD.encode("alertmanager:k3"));
        assert_eq!(
            api_key(&with("authorization", &basic)).as_deref(),
            Some("k3")
        );
        let user_only = format!("Basic {}", STANDARD.encode("k4:"));
        assert_eq!(
            api_key(&with("authorization", &user_only)).as_deref(),
            Some("k4")
        );
        assert_eq!(api_key(&with("authorization", "Bearer ")), None);
        assert_eq!(api_key(&with("authorization", "Digest x")), None);
        assert_eq!(api_key(&HeaderMap::new()), None);
    }
}
