//! The JSON management API under the console (`/v1/tenants/{t}/keys`, `agents`, `topics`,
//! `subscriptions`, `test-alert`). It takes the console session, never an ingest key; writes
//! also need the session's CSRF token in `X-CSRF-Token`. Errors are problem+json.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::session::{self, Denied};
use super::{send_test_alert, ConsoleState};
use crate::error::StoreError;
use crate::http::ApiError;
use crate::model::Provider;
use crate::ports::ConsoleSession;

type St = State<Arc<ConsoleState>>;

/// The session of an API request for `tenant`; `write` also checks origin and CSRF token.
async fn authorize(
    st: &ConsoleState,
    headers: &HeaderMap,
    tenant: &str,
    write: bool,
) -> Result<ConsoleSession, ApiError> {
    let s = match session::current(st.sessions.as_ref(), headers, Some(tenant)).await? {
        Ok((_, s)) => s,
        Err(Denied::SignedOut) => return Err(ApiError::NotSignedIn),
        Err(Denied::OtherTenant) => {
            return Err(ApiError::NotFound(format!("No tenant {tenant:?} here.")))
        }
    };
    if write {
        let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
        if !session::same_origin(headers, st.config.public_url.as_deref())
            || !session::csrf_ok(sent, &s)
        {
            return Err(ApiError::CsrfRejected);
        }
    }
    Ok(s)
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|e| ApiError::InvalidPayload(e.body_text()))
}

fn invalid(e: StoreError) -> ApiError {
    match e {
        StoreError::Invalid(d) => ApiError::InvalidPayload(d),
        other => other.into(),
    }
}

/// Key names are shown in lists and logs: printable and bounded.
pub(super) fn check_key_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() || name.chars().count() > crate::model::MAX_NAME_CHARS {
        return Err(format!(
            "name: give the key a name of 1 to {} characters",
            crate::model::MAX_NAME_CHARS
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("name: control characters are not allowed".into());
    }
    Ok(())
}

/// `Err(why)` when the tenant holds [`super::MAX_KEYS_PER_TENANT`] keys already.
pub(super) async fn room_for_key(
    st: &ConsoleState,
    tenant: &str,
) -> Result<Result<(), String>, StoreError> {
    let n = st.directory.list_keys(tenant).await?.len();
    Ok(if n >= super::MAX_KEYS_PER_TENANT {
        Err(format!(
            "This tenant has {n} keys, the most it may hold; revoked keys count too. Ask an \
             operator to remove old ones."
        ))
    } else {
        Ok(())
    })
}

/// `Err(why)` when `topic` is new and the allow-list is full.
pub(super) async fn room_for_topic(
    st: &ConsoleState,
    tenant: &str,
    topic: &str,
) -> Result<Result<(), String>, StoreError> {
    let topics = topics_of(st, tenant).await?;
    Ok(
        if topics.len() >= super::MAX_TOPICS_PER_TENANT && !topics.iter().any(|t| t == topic) {
            Err(format!(
                "The allow-list holds {} topics, the most it may; remove one first.",
                topics.len()
            ))
        } else {
            Ok(())
        },
    )
}

/// `GET /v1/tenants/{t}/keys`: the tenant's keys, never their secrets.
pub async fn list_keys(
    State(st): St,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, &tenant, false).await?;
    Ok(Json(super::keys_with_usage(&st, &tenant).await?).into_response())
}

#[derive(Deserialize)]
pub struct NewKey {
    name: String,
}

/// `POST /v1/tenants/{t}/keys` `{"name"}`: 201 with the key and webhook secret, shown once.
pub async fn create_key(
    State(st): St,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    b: Result<Json<NewKey>, JsonRejection>,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, &tenant, true).await?;
    let b = body(b)?;
    check_key_name(&b.name).map_err(ApiError::InvalidPayload)?;
    room_for_key(&st, &tenant)
        .await?
        .map_err(ApiError::InvalidPayload)?;
    let k = st
        .directory
        .create_key(&tenant, &b.name)
        .await
        .map_err(invalid)?;
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "keyId": k.key_id,
            "apiKey": k.api_key,
            "webhookSecret": k.webhook_secret,
        })),
    )
        .into_response())
}

/// A key id of this tenant, or 404 (another tenant's key answers the same as none).
async fn own_key(st: &ConsoleState, tenant: &str, key: &str) -> Result<(), ApiError> {
    if st
        .directory
        .list_keys(tenant)
        .await?
        .iter()
        .any(|k| k.key_id == key)
    {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "No key {key:?} for tenant {tenant:?}."
        )))
    }
}

/// `POST /v1/tenants/{t}/keys/{key}/revoke`.
pub async fn revoke_key(
    State(st): St,
    Path((tenant, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, &tenant, true).await?;
    own_key(&st, &tenant, &key).await?;
    st.directory
        .revoke_key(&tenant, &key)
        .await
        .map_err(invalid)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/tenants/{t}/keys/{key}/rotate-secret`: the new secret, shown once.
pub async fn rotate_secret(
    State(st): St,
    Path((tenant, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, &tenant, true).await?;
    own_key(&st, &tenant, &key).await?;
    let secret = st
        .directory
        .rotate_secret(&tenant, &key)
        .await
        .map_err(invalid)?;
    Ok((
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(json!({"keyId": key, "webhookSecret": secret})),
    )
        .into_response())
}

/// `POST /v1/tenants/{t}/keys/{key}/retire-secret`.
pub async fn retire_secret(
    State(st): St,
    Path((tenant, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, &tenant, true).await?;
    own_key(&st, &tenant, &key).await?;
    st.directory
        .retire_secret(&tenant, &key)
        .await
        .map_err(invalid)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SentrySecret {
    client_secret: String,
}

/// `PUT /v1/tenants/{t}/keys/{key}/sentry-secret` `{"clientSecret"}`.
pub async fn set_sentry_secret(
    State(st): St,
    Path((tenant, key)): Path<(String, String)>,
    headers: HeaderMap,
    b: Result<Json<SentrySecret>, JsonRejection>,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, &tenant, true).await?;
    let b = body(b)?;
    own_key(&st, &tenant, &key).await?;
    st.directory
        .set_sentry_secret(&tenant, &key, &b.client_secret)
        .await
        .map_err(invalid)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/tenants/{t}/agents`: the tenant's overrides of the severity -> agents table.
pub async fn get_agents(
    State(st): St,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, &tenant, false).await?;
    let o = st.directory.agent_overrides(&tenant).await?;
    let map: HashMap<&str, &Vec<String>> = o.0.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Ok(Json(map).into_response())
}

/// `PUT /v1/tenants/{t}/agents` `{"critical": ["logs", ...], ...}`: replaces the overrides
/// (severities left out use the default row).
pub async fn put_agents(
    State(st): St,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    b: Result<Json<HashMap<String, Vec<String>>>, JsonRejection>,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, &tenant, true).await?;
    let b = body(b)?;
    if let Some(k) = b
        .keys()
        .find(|k| crate::model::Severity::from_label(k).map(|s| s.as_str()) != Some(k.as_str()))
    {
        return Err(ApiError::InvalidPayload(format!(
            "{k:?}: use the severities critical, high, medium, low and info"
        )));
    }
    let fields: HashMap<String, String> = b
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                if v.is_empty() {
                    "none".into()
                } else {
                    v.join(",")
                },
            )
        })
        .collect();
    let o = super::pages::parse_agents(&fields).map_err(ApiError::InvalidPayload)?;
    st.directory
        .set_agent_overrides(&tenant, &o)
        .await
        .map_err(invalid)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The tenant's allow-listed topics.
pub(super) async fn topics_of(st: &ConsoleState, tenant: &str) -> Result<Vec<String>, StoreError> {
    st.directory.allowed_topics(tenant).await
}

/// `GET /v1/tenants/{t}/topics`.
pub async fn list_topics(
    State(st): St,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, &tenant, false).await?;
    Ok(Json(json!({"topicArns": topics_of(&st, &tenant).await?})).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Topic {
    topic_arn: String,
}

/// `POST /v1/tenants/{t}/topics` `{"topicArn"}`.
pub async fn add_topic(
    State(st): St,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    b: Result<Json<Topic>, JsonRejection>,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, &tenant, true).await?;
    let b = body(b)?;
    room_for_topic(&st, &tenant, &b.topic_arn)
        .await?
        .map_err(ApiError::InvalidPayload)?;
    st.directory
        .allow_topic(&tenant, &b.topic_arn, true)
        .await
        .map_err(invalid)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /v1/tenants/{t}/topics?topicArn=`.
pub async fn remove_topic(
    State(st): St,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    q: Result<Query<Topic>, QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, &tenant, true).await?;
    let Query(t) = q.map_err(|e| ApiError::InvalidQuery(e.body_text()))?;
    st.directory
        .allow_topic(&tenant, &t.topic_arn, false)
        .await
        .map_err(invalid)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/tenants/{t}/subscriptions`: SNS subscriptions to this tenant and their states.
pub async fn list_subscriptions(
    State(st): St,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, &tenant, false).await?;
    Ok(Json(st.subscriptions.list(&tenant).await?).into_response())
}

#[derive(Deserialize, Default)]
pub struct TestAlert {
    provider: Option<String>,
}

/// `POST /v1/tenants/{t}/test-alert` `{"provider"?}`: a test alert through the real ingest path;
/// 202 with its incident id and the incident's console URL.
pub async fn test_alert(
    State(st): St,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    b: Result<Json<TestAlert>, JsonRejection>,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, &tenant, true).await?;
    let b = body(b)?;
    let provider = match b.provider.as_deref() {
        None => Provider::Generic,
        Some(p) => p
            .parse::<Provider>()
            .map_err(|_| ApiError::UnknownProvider(p.to_owned()))?,
    };
    st.runtime
        .test_alerts
        .check(&tenant, 1)
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    let r = send_test_alert(&st, &tenant, provider).await?;
    let id = r.incident_id.clone().unwrap_or_default();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "sourceAlertId": r.source_alert_id,
            "incidentId": id,
            "outcome": r.outcome,
            "consoleUrl": format!("/console/t/{tenant}/incidents/{id}"),
        })),
    )
        .into_response())
}
