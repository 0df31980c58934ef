//! `POST /v1/webhooks/{tenantId}/{provider}`: authenticate, verify the signature over the raw
//! bytes, parse, normalise, and hand the alerts to the ledger (docs/contract.md).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use tracing::instrument;

use super::admission::{admit_charged, read_body};
use super::headers::{header_str, request_headers, API_KEY};
use super::{ApiError, AppState};
use crate::ingest::verify_and_normalize;
use crate::model::Provider;

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

    // Amazon SNS cannot send headers: without a key, a cloudwatch request must stand on SNS's
    // own signature (docs/contract.md#authentication).
    if provider == Provider::Cloudwatch && header_str(&headers, API_KEY).is_none() {
        return super::sns::handle(&app, &tenant, &headers, body).await;
    }
    let key = super::authenticate(&app, &headers, &tenant).await?;
    let bytes = read_body(&app, body).await?;
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
