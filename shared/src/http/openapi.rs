//! The public HTTP API as an OpenAPI 3.1 document generated from the handlers' annotations and
//! the answer types: served at `/openapi.json` and committed as `docs/openapi.json` (a test fails
//! when the two drift; `scripts/test` checks the file with a standard validator).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::OpenApi;

/// A 200 answer of the webhook endpoint: a non-alert event acknowledged, or an SNS
/// (un)subscription confirmed.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Acknowledged {
    Event(super::admission::Admitted),
    Subscription(super::sns::SubscriptionAnswer),
}

/// A 202 answer of the webhook endpoint: the usual answer, or PagerDuty's for `pagerduty`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Accepted {
    Alerts(super::admission::Admitted),
    PagerDuty(super::admission::PagerDutyAnswer),
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "CauseFlow ingest",
        description = "Receives monitoring alerts (Datadog, Grafana, CloudWatch through Amazon SNS, Sentry, Prometheus Alertmanager, PagerDuty Events v2 senders, generic), deduplicates them and records incidents. The contract in prose: docs/contract.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(super::webhook::handle, super::list_incidents, super::get_incident, super::healthz),
    tags(
        (name = "webhooks", description = "Alerts in."),
        (name = "incidents", description = "Incidents out."),
        (name = "health", description = "Liveness."),
    )
)]
pub struct ApiDoc;

/// The document as JSON, formatted as committed.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
}

/// `GET /openapi.json`. The route needs no key, so the document is built once per process,
/// not once per request.
pub(super) async fn serve() -> impl IntoResponse {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.get_or_init(document).as_str(),
    )
}
