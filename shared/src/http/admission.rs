//! What the webhook and SNS handlers share: reading the body within its bounds, and admission,
//! once a request is authenticated and its alerts normalised: the per-request caps, the rate charge, the ledger, and the answer
//! (docs/contract.md#answers).

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::{BodyExt, Limited};
use serde::Serialize;
use tracing::info;

use super::observe::AnswerOutcome;
use super::{ApiError, AppState};
use crate::model::{AlertResult, Outcome, Provider};
use crate::normalize::Normalized;
use crate::telemetry;

/// Charges an authenticated, verified request to the tenant's rate, one token per alert, after
/// refusing more alerts than one request may carry; then admits it.
pub(super) async fn admit_charged(
    app: &AppState,
    tenant: &str,
    provider: Provider,
    normalized: Normalized,
) -> Result<Response, ApiError> {
    let count = match &normalized {
        Normalized::Alerts(a) => a.len(),
        Normalized::NotAnAlert { .. } => 1,
    };
    if count > app.max_alerts {
        return Err(ApiError::TooManyAlerts {
            count,
            limit: app.max_alerts,
        });
    }
    if let Normalized::Alerts(alerts) = &normalized {
        check_repeats(alerts)?;
    }
    app.limiter
        .check(tenant, count)
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    admit(app, tenant, provider, normalized).await
}

/// Reads the body, refusing more than the limit while reading (413) and a body slower than the
/// body timeout (408): both before anything is decided or recorded.
pub(super) async fn read_body(app: &AppState, body: Body) -> Result<axum::body::Bytes, ApiError> {
    Ok(
        tokio::time::timeout(app.body_timeout, Limited::new(body, app.max_body).collect())
            .await
            .map_err(|_| ApiError::RequestTimeout(app.body_timeout))?
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ApiError::PayloadTooLarge {
                        limit: app.max_body,
                    }
                } else {
                    ApiError::InvalidPayload(format!("the body could not be read: {e}"))
                }
            })?
            .to_bytes(),
    )
}

/// Most times one request may name the same alert. Each repeat is applied after the previous
/// one, which on AWS costs a round of calls, so the count is bounded; no sender repeats an alert
/// more than firing, resolved, firing in one notification.
pub const MAX_REPEATS: usize = 3;

fn check_repeats(alerts: &[crate::model::Alert]) -> Result<(), ApiError> {
    if alerts.len() <= MAX_REPEATS {
        return Ok(());
    }
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for a in alerts {
        let n = seen.entry(a.source_alert_id.as_str()).or_default();
        *n += 1;
        if *n > MAX_REPEATS {
            return Err(ApiError::InvalidPayload(format!(
                "alert id {:?} appears more than {MAX_REPEATS} times in one request: send each \
                 alert once per notification",
                a.source_alert_id
            )));
        }
    }
    Ok(())
}

/// Hands normalised alerts to the ledger and answers 202, 409 or 200 (docs/contract.md#answers).
async fn admit(
    app: &AppState,
    tenant: &str,
    provider: Provider,
    normalized: Normalized,
) -> Result<Response, ApiError> {
    let alerts = match normalized {
        Normalized::NotAnAlert { what } => {
            info!(%what, "acknowledged a non-alert event");
            let answer = Admitted {
                tenant_id: tenant.to_owned(),
                provider,
                alerts: Vec::new(),
                detail: Some(format!(
                    "{what} acknowledged; it is not an alert, so nothing was created."
                )),
            };
            return Ok(answered((StatusCode::OK, Json(answer)), "not_an_alert"));
        }
        Normalized::Alerts(a) => a,
    };

    let results = app
        .ledger
        .admit(tenant, provider, &alerts, chrono::Utc::now())
        .await
        .inspect_err(|e| tracing::error!(error = %e, "ledger admit failed"))?;

    // Counted once; the metric, the log line and the answer's outcome label all read these.
    let counts = Outcome::ALL.map(|o| (o, results.iter().filter(|r| r.outcome == o).count()));
    let count = |o: Outcome| counts.iter().find(|(k, _)| *k == o).map_or(0, |(_, n)| *n);
    for (o, n) in counts {
        telemetry::alerts(provider.as_str(), o.as_str(), n);
    }
    info!(
        alerts = results.len(),
        created = count(Outcome::Created),
        duplicate = count(Outcome::Duplicate),
        resolved = count(Outcome::Resolved),
        "webhook accepted"
    );
    if provider == Provider::Pagerduty {
        let outcome = results.first().map_or("accepted", |r| r.outcome.as_str());
        return pagerduty_answer(results).map(|r| answered(r, outcome));
    }
    // Alertmanager re-sends a firing group every repeat_interval and counts anything but a 2xx
    // as a failed notification, which it repeats and alerts on: its duplicates are accepted.
    let status = if results
        .iter()
        .any(|r| r.queued() || r.outcome == Outcome::Ignored)
        || provider == Provider::Alertmanager
    {
        StatusCode::ACCEPTED
    } else if results.iter().any(|r| r.outcome == Outcome::Duplicate) {
        return Err(ApiError::Duplicate { alerts: results });
    } else {
        StatusCode::OK
    };
    let outcome = [
        Outcome::Created,
        Outcome::Resolved,
        Outcome::Acknowledged,
        Outcome::Ignored,
        // Alertmanager's repeat of a group it already sent: all duplicates, still a 202.
        Outcome::Duplicate,
    ]
    .into_iter()
    .find(|o| count(*o) > 0)
    .map_or("accepted", Outcome::as_str);
    let answer = Admitted {
        tenant_id: tenant.to_owned(),
        provider,
        alerts: results,
        detail: None,
    };
    Ok(answered((status, Json(answer)), outcome))
}

/// The answer, marked with its outcome for the request metrics.
fn answered(answer: impl IntoResponse, outcome: &'static str) -> Response {
    let mut resp = answer.into_response();
    resp.extensions_mut().insert(AnswerOutcome(outcome));
    resp
}

/// The answer to a webhook that was admitted (202), or that carried no alert (200).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Admitted {
    pub tenant_id: String,
    pub provider: Provider,
    /// Each alert of the request, in order, with what became of it.
    pub alerts: Vec<AlertResult>,
    /// For a sender event that is not an alert: what was acknowledged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The answer of the PagerDuty Events API v2, so its clients work unchanged: 202 with `status`,
/// `message` and `dedup_key` (made up for a trigger that had none). PagerDuty answers a trigger
/// for an open alert the same way, so a duplicate is a 202 here too, its outcome told.
fn pagerduty_answer(results: Vec<AlertResult>) -> Result<Response, ApiError> {
    let Some(r) = results.into_iter().next() else {
        return Err(ApiError::Unavailable(
            "the event was not admitted; retry".into(),
        ));
    };
    let answer = PagerDutyAnswer {
        status: "success",
        message: "Event processed",
        dedup_key: r.source_alert_id,
        incident_id: r.incident_id,
        outcome: r.outcome,
    };
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// The answer to a `pagerduty` event (PagerDuty's own fields, then ours).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PagerDutyAnswer {
    /// Always `success`.
    pub status: &'static str,
    /// Always `Event processed`.
    pub message: &'static str,
    /// The event's `dedup_key`, or the one made up for a trigger without one.
    pub dedup_key: String,
    #[serde(rename = "incidentId", skip_serializing_if = "Option::is_none")]
    pub incident_id: Option<String>,
    pub outcome: Outcome,
}
