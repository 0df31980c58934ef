//! Prometheus Alertmanager's webhook receiver (payload `"version": "4"`): one notification per
//! alert group, each alert with its own `fingerprint` and `status`, so a group can resolve in
//! part (docs/senders.md#prometheus-alertmanager).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{
    alert, alert_objects, arr_field, fingerprint_and_status, push_link, str_field, string_map,
    text_field, type_name, Normalized, PayloadError,
};
use crate::model::{Alert, Severity};

/// Without a `severity` label, or with one outside the vocabulary, an alert is high, as a
/// Grafana alert is (docs/contract.md#severity).
const DEFAULT_SEVERITY: Severity = Severity::High;

/// The tag that records how many alerts Alertmanager left out of the notification
/// (`max_alerts` in the receiver): they never reach us, so the incident says so.
pub const TRUNCATED_TAG: &str = "alertmanager_truncated_alerts";

/// Prometheus's `severity` label: the shared vocabulary plus the `page` and `ticket` values of
/// the Prometheus community's runbooks.
fn severity(labels: &BTreeMap<String, String>) -> Severity {
    let Some(label) = labels.get("severity") else {
        return DEFAULT_SEVERITY;
    };
    match label.trim().to_ascii_lowercase().as_str() {
        "page" => Severity::Critical,
        "ticket" => Severity::Low,
        other => Severity::from_label(other).unwrap_or(DEFAULT_SEVERITY),
    }
}

pub(super) fn normalize(root: &Map<String, Value>) -> Result<Normalized, PayloadError> {
    match str_field(root, "version", "")? {
        None | Some("4") => {}
        Some(other) => {
            return Err(PayloadError::new(
                "version",
                format!(
                    "\"4\", the webhook payload version of every Alertmanager since 0.7 (got {other:?})"
                ),
            ))
        }
    }
    let alerts = arr_field(root, "alerts", "")?.ok_or_else(|| {
        PayloadError::new(
            "alerts",
            "an array of alerts (Alertmanager's webhook payload)",
        )
    })?;
    let common = string_map(root, "commonLabels", "")?;
    let truncated = match root.get("truncatedAlerts") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) if n.is_u64() => n.as_u64().unwrap_or(0),
        Some(other) => {
            return Err(PayloadError::new(
                "truncatedAlerts",
                format!("expected a whole number, got {}", type_name(other)),
            ))
        }
    };
    let external = text_field(root, "externalURL", "")?;
    let mut out = Vec::with_capacity(alerts.len());
    for (field, a) in alert_objects(alerts)? {
        let mut alert = one(a, &field, &common)?;
        push_link(&mut alert.links, external);
        if truncated > 0 {
            alert
                .tags
                .insert(TRUNCATED_TAG.to_owned(), truncated.to_string());
        }
        out.push(alert);
    }
    Ok(Normalized::Alerts(out))
}

fn one(
    a: &Map<String, Value>,
    p: &str,
    common: &BTreeMap<String, String>,
) -> Result<Alert, PayloadError> {
    let (fingerprint, status) = fingerprint_and_status(a, p, "Alertmanager")?;
    let labels = string_map(a, "labels", p)?;
    let annotations = string_map(a, "annotations", p)?;
    let summary = annotations.get("summary").filter(|s| !s.trim().is_empty());
    let title = summary
        .or(labels.get("alertname"))
        .map(String::as_str)
        .unwrap_or("Prometheus alert");
    let mut out = alert(fingerprint, status, title, severity(&labels));
    out.message = annotations
        .get("description")
        .or(annotations.get("message"))
        .or(summary)
        .filter(|s| !s.trim().is_empty())
        .cloned();
    // The alert's own labels first, then the group's; `job` names the scraped service where
    // no `service` label does.
    let label = |names: &[&str]| {
        names.iter().find_map(|n| {
            labels
                .get(*n)
                .or(common.get(*n))
                .filter(|v| !v.trim().is_empty())
                .cloned()
        })
    };
    out.service = label(&["service", "job"]);
    out.environment = label(&["env", "environment"]);
    push_link(&mut out.links, text_field(a, "generatorURL", p)?);
    for key in ["runbook_url", "dashboard_url"] {
        push_link(&mut out.links, annotations.get(key).map(String::as_str));
    }
    out.tags = labels;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AlertStatus;
    use serde_json::json;

    fn alerts(v: Value) -> Result<Vec<Alert>, PayloadError> {
        let Value::Object(m) = v else { unreachable!() };
        match normalize(&m)? {
            Normalized::Alerts(a) => Ok(a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_group_resolves_in_part() {
        let a = alerts(json!({"version":"4","status":"firing","truncatedAlerts":0,
            "commonLabels":{"alertname":"HighLatency","env":"prod"},
            "externalURL":"http://am:9093",
            "alerts":[
            {"status":"firing","fingerprint":"aa","labels":{"alertname":"HighLatency","severity":"page","job":"api"},
             "annotations":{"summary":"p99 over 1s","runbook_url":"https://runbooks/x"},"generatorURL":"http://prom/graph"},
            {"status":"resolved","fingerprint":"bb","labels":{"alertname":"HighLatency","service":"web"}}]}))
        .unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].status, a[0].severity),
            (AlertStatus::Firing, Severity::Critical)
        );
        assert_eq!(a[0].title, "p99 over 1s");
        assert_eq!(a[0].service.as_deref(), Some("api"));
        assert_eq!(a[0].environment.as_deref(), Some("prod"));
        assert_eq!(
            a[0].links,
            ["http://prom/graph", "https://runbooks/x", "http://am:9093"]
        );
        assert_eq!(
            (a[1].status, a[1].title.as_str()),
            (AlertStatus::Resolved, "HighLatency")
        );
        assert_eq!(a[1].service.as_deref(), Some("web"));
        assert_eq!(a[1].severity, Severity::High, "no severity label");
    }

    #[test]
    fn severity_labels() {
        let sev = |s: &str| severity(&BTreeMap::from([("severity".into(), s.into())]));
        assert_eq!(sev("critical"), Severity::Critical);
        assert_eq!(sev("warning"), Severity::Medium);
        assert_eq!(sev("ticket"), Severity::Low);
        assert_eq!(sev("info"), Severity::Info);
        assert_eq!(sev("whatever"), Severity::High);
    }

    #[test]
    fn truncation_is_recorded_and_bad_shapes_are_named() {
        let a =
            alerts(json!({"truncatedAlerts":3,"alerts":[{"status":"firing","fingerprint":"f"}]}))
                .unwrap();
        assert_eq!(a[0].tags[TRUNCATED_TAG], "3");
        let e = alerts(json!({"alerts":[{"status":"firing"}]})).unwrap_err();
        assert_eq!(e.field, "alerts[0].fingerprint");
        let e = alerts(json!({"version":"3","alerts":[]})).unwrap_err();
        assert_eq!(e.field, "version");
        let e = alerts(json!({"alerts":[{"status":"pending","fingerprint":"f"}]})).unwrap_err();
        assert_eq!(e.field, "alerts[0].status");
        let e = alerts(json!({"receiver":"x"})).unwrap_err();
        assert_eq!(e.field, "alerts");
    }
}
