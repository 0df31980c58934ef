//! The HTTP API (docs/contract.md): one axum `Router` served by `causeflow serve` through
//! `http::server` and by the ingest Lambda with `lambda_http::run`.

mod admission;
mod headers;
pub mod observe;
pub mod openapi;
mod problem;
mod ratelimit;
#[cfg(feature = "embedded")]
pub mod server;
mod sns;
mod usage;
mod webhook;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

pub use problem::ApiError;
pub use ratelimit::{RateLimit, RateLimiter};
pub use sns::SnsSupport;
pub use usage::UsageRecorder;

use crate::auth::hash_api_key;
use crate::model::IncidentStatus;
use crate::ports::{AlertLedger, ApiKeys, IncidentQuery, IncidentStore, KeyRecord, TopicAllowList};
pub use headers::{header_str, request_headers};

/// Bodies above this are refused before parsing: SQS's message limit (docs/contract.md#answers).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Most alerts one request may carry unless configured otherwise: more than any sender batches
/// by default, few enough that a full request is admitted well within the ingest function's
/// timeout (docs/security.md).
pub const DEFAULT_MAX_ALERTS: usize = 500;

/// Everything a request handler needs, built once per process.
pub struct AppState {
    pub keys: Arc<dyn ApiKeys>,
    pub topics: Arc<dyn TopicAllowList>,
    pub ledger: Arc<dyn AlertLedger>,
    pub incidents: Arc<dyn IncidentStore>,
    pub limiter: RateLimiter,
    pub max_body: usize,
    /// Alerts one request may carry; more is refused with 413 `too_many_alerts`.
    pub max_alerts: usize,
    /// Longest wait for a request's body; a body that is slower is answered 408 before anything
    /// is recorded.
    pub body_timeout: std::time::Duration,
    /// CloudWatch straight from SNS (signature, binding, confirmation); `None` refuses it.
    pub sns: Option<SnsSupport>,
    /// Where keys' last use is recorded (the console shows it); `None`: not recorded.
    pub usage: Option<UsageRecorder>,
}

impl AppState {
    pub fn new(
        directory: Arc<impl ApiKeys + TopicAllowList + 'static>,
        ledger: Arc<dyn AlertLedger>,
        incidents: Arc<dyn IncidentStore>,
        rate_limit: RateLimit,
    ) -> Self {
        AppState {
            keys: directory.clone(),
            topics: directory,
            ledger,
            incidents,
            limiter: RateLimiter::new(rate_limit),
            max_body: MAX_BODY_BYTES,
            max_alerts: DEFAULT_MAX_ALERTS,
            body_timeout: std::time::Duration::from_secs(15),
            sns: None,
            usage: None,
        }
    }
}

/// The API's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi::serve))
        .route("/v1/webhooks/{tenant}/{provider}", post(webhook::handle))
        .route("/v1/tenants/{tenant}/incidents", get(list_incidents))
        .route(
            "/v1/tenants/{tenant}/incidents/{incident}",
            get(get_incident),
        )
        .fallback(|| async {
            ApiError::NotFound(
                "No such route: webhooks go to POST /v1/webhooks/{tenantId}/{provider}, incidents \
                 are read from GET /v1/tenants/{tenantId}/incidents."
                    .into(),
            )
        })
        .layer(axum::middleware::from_fn(observe::observe))
        .with_state(state)
}

/// The active key of `tenant` that `api_key` names. Unknown, revoked and other tenants' keys
/// all get the same answer, so the answer does not reveal which it was.
async fn tenant_key(app: &AppState, tenant: &str, api_key: &str) -> Result<KeyRecord, ApiError> {
    match app.keys.key_by_hash(&hash_api_key(api_key)).await? {
        Some(k) if !k.revoked && k.tenant_id == tenant => {
            if let Some(u) = &app.usage {
                u.note(&k.key_id).await;
            }
            Ok(k)
        }
        _ => Err(ApiError::InvalidApiKey),
    }
}

/// Authenticates a request by the API key in its headers (`X-API-Key`, or `Authorization` as
/// Bearer or Basic).
async fn authenticate(
    app: &AppState,
    headers: &HeaderMap,
    tenant: &str,
) -> Result<KeyRecord, ApiError> {
    let key = headers::api_key(headers).ok_or(ApiError::MissingApiKey(
        "the X-API-Key header (or Authorization: Bearer <key>)",
    ))?;
    tenant_key(app, tenant, &key).await
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The service is up.", body = Object, example = json!({"status": "ok"}))))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[derive(Debug, Deserialize)]
struct ListParams {
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// List a tenant's incidents, newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/incidents", tag = "incidents",
    params(
        ("tenant" = String, Path, description = "The tenant id."),
        ("X-API-Key" = Option<String>, Header, description = "One of the tenant's API keys (or send it as Authorization: Bearer <key>, or HTTP Basic with the key as password)."),
        ("status" = Option<String>, Query, description = "open (nobody has acknowledged it), acknowledged or resolved."),
        ("limit" = Option<u32>, Query, description = "1 to 200; 50 by default."),
        ("cursor" = Option<String>, Query, description = "The nextCursor of the previous page."),
    ),
    responses(
        (status = 200, description = "One page of incidents.", body = crate::ports::IncidentPage),
        (status = 400, description = "A query parameter out of range.", body = problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key.", body = problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Storage unavailable.", body = problem::Problem, content_type = "application/problem+json"),
    ))]
async fn list_incidents(
    State(app): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authenticate(&app, &headers, &tenant).await?;
    let Query(p) = params.map_err(|e| ApiError::InvalidQuery(e.body_text()))?;
    let status = match p.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(IncidentStatus::parse(s).ok_or_else(|| {
            ApiError::InvalidQuery(format!(
                "status={s:?}: use status=open, status=acknowledged or status=resolved"
            ))
        })?),
    };
    let limit = match p.limit.as_deref() {
        None | Some("") => 50,
        Some(l) => match l.parse::<usize>() {
            Ok(n @ 1..=200) => n,
            _ => {
                return Err(ApiError::InvalidQuery(format!(
                    "limit={l:?}: use a whole number from 1 to 200"
                )))
            }
        },
    };
    let query = IncidentQuery {
        status,
        limit,
        cursor: p.cursor.filter(|c| !c.is_empty()),
        ..Default::default()
    };
    let page = app.incidents.list(&tenant, &query).await?;
    Ok(Json(page).into_response())
}

/// One incident.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/incidents/{incident}", tag = "incidents",
    params(
        ("tenant" = String, Path, description = "The tenant id."),
        ("incident" = String, Path, description = "The incident id."),
        ("X-API-Key" = Option<String>, Header, description = "One of the tenant's API keys (or send it as Authorization: Bearer <key>, or HTTP Basic with the key as password)."),
    ),
    responses(
        (status = 200, description = "The incident.", body = crate::model::Incident),
        (status = 401, description = "Missing or invalid API key.", body = problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such incident for this tenant.", body = problem::Problem, content_type = "application/problem+json"),
    ))]
async fn get_incident(
    State(app): State<Arc<AppState>>,
    Path((tenant, incident)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(&app, &headers, &tenant).await?;
    match app.incidents.get(&tenant, &incident).await? {
        Some(i) => Ok(Json(i).into_response()),
        None => Err(ApiError::NotFound(format!(
            "No incident {incident:?} for tenant {tenant:?}; incidents appear once triage has run (usually within a second)."
        ))),
    }
}
