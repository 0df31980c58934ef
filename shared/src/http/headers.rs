//! Reading request headers: the one place that knows header names, and the values the ingest
//! core needs, handed to it as plain strings.

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
