//! The cloudwatch provider straight from an Amazon SNS subscription
//! (docs/contract.md#authentication): the request carries no headers of ours, so it must prove
//! itself with SNS's RSA signature, and the tenant must be proven by HTTP Basic credentials holding
//! one of its API keys or by the topic being on its allow-list. Unbound requests are refused before
//! any certificate is fetched.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use tracing::{info, warn};

use super::admission::{admit_charged, read_body};
use super::headers::{header_str, SNS_MESSAGE_TYPE, SNS_RAW_DELIVERY};
use super::{ApiError, AppState};
use crate::model::Provider;
use crate::normalize::{normalize, Context};
use crate::ports::{Subscription, SubscriptionConfirmer, SubscriptionState, Subscriptions};
use crate::sns::{self, CertCache, SnsError, SnsMessage, SnsType};

/// The answer to an SNS subscription or unsubscribe confirmation (200).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionAnswer {
    pub tenant_id: String,
    pub topic_arn: String,
    pub subscription: SubscriptionState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_arn: Option<String>,
}

/// What the SNS path needs besides the shared state; absent when the host does not offer it.
pub struct SnsSupport {
    pub certs: CertCache,
    pub confirmer: Arc<dyn SubscriptionConfirmer>,
    pub subscriptions: Arc<dyn Subscriptions>,
}

fn sns_error(e: SnsError) -> ApiError {
    match e {
        SnsError::Invalid(d) => ApiError::BadRequest(d),
        SnsError::UntrustedUrl(d) | SnsError::BadSignature(d) => ApiError::SignatureMismatch(d),
        SnsError::CertUnavailable(d) => {
            warn!(detail = %d, "SNS certificate unavailable");
            ApiError::Unavailable(
                "the SNS signing certificate could not be fetched; retry shortly".into(),
            )
        }
    }
}

pub(super) async fn handle(
    app: &AppState,
    tenant: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let missing_key = || ApiError::MissingApiKey("the X-API-Key header");
    let Some(support) = app.sns.as_ref() else {
        return Err(missing_key());
    };
    if header_str(headers, SNS_RAW_DELIVERY).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Err(ApiError::MissingSignature(
            "Raw message delivery carries no SNS signature: it is accepted only with X-API-Key and \
             X-Webhook-Signature (use the sample forwarder), or turn raw delivery off."
                .into(),
        ));
    }
    let bytes = read_body(app, body).await?;
    let root = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Err(ApiError::BadRequest(
                "The body is not an SNS message (a JSON object); other senders need X-API-Key."
                    .into(),
            ))
        }
    };
    if !sns::is_envelope(&root) {
        return Err(missing_key());
    }
    let msg = sns::parse(&root).map_err(sns_error)?;
    sns::check_type_header(header_str(headers, SNS_MESSAGE_TYPE), &root).map_err(sns_error)?;
    sns::check_origin(&msg, chrono::Utc::now()).map_err(sns_error)?;
    // Tenant binding first: unbound requests never cause an outbound fetch.
    bind_tenant(app, tenant, headers, &msg.topic_arn).await?;
    support.certs.verify(&msg).await.map_err(sns_error)?;
    match msg.kind {
        SnsType::Notification => notification(app, tenant, &msg).await,
        SnsType::SubscriptionConfirmation => confirmation(app, support, tenant, &msg).await,
        SnsType::UnsubscribeConfirmation => unsubscribe(app, support, tenant, &msg).await,
    }
}

/// Proves the request is the tenant's: HTTP Basic credentials holding one of its API keys, or
/// the topic on its allow-list. Refused requests are challenged, so SNS sends credentials.
async fn bind_tenant(
    app: &AppState,
    tenant: &str,
    headers: &HeaderMap,
    topic_arn: &str,
) -> Result<(), ApiError> {
    match super::headers::basic_key(headers) {
        Some(key) => super::tenant_key(app, tenant, &key)
            .await
            .map(|_| ())
            .map_err(|e| match e {
                ApiError::InvalidApiKey => ApiError::Challenge(Box::new(e)),
                other => other,
            }),
        None if app.topics.topic_allowed(tenant, topic_arn).await? => Ok(()),
        None => Err(ApiError::Challenge(Box::new(ApiError::MissingApiKey(
            "HTTP Basic credentials (the key as password; or allow-list the topic)",
        )))),
    }
}

/// SNS counts any 4xx as delivered, so a 429 would drop the alarm: over-rate SNS deliveries get
/// a 503, the one answer SNS retries. Only verified messages are charged, so forged posts never
/// spend the tenant's rate.
fn over_rate(retry_after: std::time::Duration) -> ApiError {
    ApiError::Unavailable(format!(
        "This tenant is over its request rate; SNS will retry (after about {} s).",
        retry_after.as_secs().max(1)
    ))
}

/// A verified alarm notification: normalised from the signed fields alone.
async fn notification(
    app: &AppState,
    tenant: &str,
    msg: &SnsMessage,
) -> Result<Response, ApiError> {
    let ctx = Context {
        signed: true,
        ..Context::default()
    };
    let normalized = normalize(Provider::Cloudwatch, &msg.signed_envelope(), ctx)?;
    admit_charged(app, tenant, Provider::Cloudwatch, normalized)
        .await
        .map_err(|e| match e {
            ApiError::RateLimited { retry_after } => over_rate(retry_after),
            other => other,
        })
}

fn subscription(
    tenant: &str,
    msg: &SnsMessage,
    state: SubscriptionState,
    arn: Option<String>,
) -> Subscription {
    Subscription {
        tenant_id: tenant.to_owned(),
        topic_arn: msg.topic_arn.clone(),
        state,
        subscription_arn: arn,
        updated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

/// A verified SubscriptionConfirmation: confirmed at once (its SubscribeURL checked first).
async fn confirmation(
    app: &AppState,
    support: &SnsSupport,
    tenant: &str,
    msg: &SnsMessage,
) -> Result<Response, ApiError> {
    app.limiter.check(tenant, 1).map_err(over_rate)?;
    let url = sns::check_subscribe_url(msg.subscribe_url.as_deref().unwrap_or_default())
        .map_err(sns_error)?;
    support
        .subscriptions
        .record(&subscription(tenant, msg, SubscriptionState::Pending, None))
        .await?;
    let token = msg.token.as_deref().unwrap_or_default();
    match support.confirmer.confirm(&msg.topic_arn, token, &url).await {
        Ok(arn) => {
            support
                .subscriptions
                .record(&subscription(
                    tenant,
                    msg,
                    SubscriptionState::Confirmed,
                    arn.clone(),
                ))
                .await?;
            info!(topic = %msg.topic_arn, "SNS subscription confirmed");
            Ok((
                StatusCode::OK,
                Json(SubscriptionAnswer {
                    tenant_id: tenant.to_owned(),
                    topic_arn: msg.topic_arn.clone(),
                    subscription: SubscriptionState::Confirmed,
                    subscription_arn: arn,
                }),
            )
                .into_response())
        }
        Err(e) => {
            warn!(topic = %msg.topic_arn, error = %e, "SNS subscription confirmation failed");
            // 503 is the only answer SNS retries.
            Err(ApiError::Unavailable(
                "confirming the SNS subscription failed; SNS will retry the confirmation".into(),
            ))
        }
    }
}

/// A verified UnsubscribeConfirmation: recorded, never confirmed (that would subscribe again).
async fn unsubscribe(
    app: &AppState,
    support: &SnsSupport,
    tenant: &str,
    msg: &SnsMessage,
) -> Result<Response, ApiError> {
    app.limiter.check(tenant, 1).map_err(over_rate)?;
    support
        .subscriptions
        .record(&subscription(
            tenant,
            msg,
            SubscriptionState::Unsubscribed,
            None,
        ))
        .await?;
    info!(topic = %msg.topic_arn, "SNS unsubscribe acknowledged (not re-confirmed)");
    Ok((
        StatusCode::OK,
        Json(SubscriptionAnswer {
            tenant_id: tenant.to_owned(),
            topic_arn: msg.topic_arn.clone(),
            subscription: SubscriptionState::Unsubscribed,
            subscription_arn: None,
        }),
    )
        .into_response())
}
