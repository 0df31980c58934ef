//! Grafana: unified alerting webhooks (one notification, many alerts), legacy dashboard alerting,
//! and Grafana OnCall / IRM outgoing webhooks that forward the whole payload.

use serde_json::{Map, Value};

use super::{
    add_pair_tags, alert, alert_objects, arr_field, fingerprint_and_status, id_field, obj_field,
    push_link, str_field, string_map, text_field, Normalized, PayloadError,
};
use crate::model::{Alert, AlertStatus, Severity};

/// Without a `severity` label, Grafana alerts are treated as high (docs/contract.md#severity).
const DEFAULT_SEVERITY: Severity = Severity::High;

/// An OnCall outgoing webhook: these cannot be signed, so authentication needs the shape.
pub fn is_oncall_payload(root: &Map<String, Value>) -> bool {
    matches!(root.get("alert_group"), Some(Value::Object(_)))
        && matches!(root.get("event"), Some(Value::Object(_)))
}

pub(super) fn normalize(root: &Map<String, Value>) -> Result<Normalized, PayloadError> {
    if is_oncall_payload(root) {
        return oncall(root).map(|a| Normalized::Alerts(vec![a]));
    }
    if let Some(alerts) = arr_field(root, "alerts", "")? {
        let mut out = Vec::with_capacity(alerts.len());
        for (field, a) in alert_objects(alerts)? {
            out.push(unified(root, a, &field)?);
        }
        return Ok(Normalized::Alerts(out));
    }
    if root.contains_key("ruleId") || root.contains_key("evalMatches") {
        return legacy(root).map(|a| Normalized::Alerts(vec![a]));
    }
    Err(PayloadError::new(
        "alerts",
        "a Grafana alerting notification: an `alerts` array (unified alerting), `ruleId` and \
         `state` (legacy alerting) or an OnCall `alert_group` with its `event`",
    ))
}

fn unified(
    root: &Map<String, Value>,
    a: &Map<String, Value>,
    p: &str,
) -> Result<Alert, PayloadError> {
    let (fingerprint, status) = fingerprint_and_status(a, p, "Grafana")?;
    let labels = string_map(a, "labels", p)?;
    let annotations = string_map(a, "annotations", p)?;
    let severity = labels
        .get("severity")
        .and_then(|s| Severity::from_label(s))
        .unwrap_or(DEFAULT_SEVERITY);
    let summary = annotations.get("summary").filter(|s| !s.trim().is_empty());
    let title = summary
        .or(labels.get("alertname"))
        .map(String::as_str)
        .or(text_field(root, "title", "")?)
        .unwrap_or("Grafana alert");
    let mut out = alert(fingerprint, status, title, severity);
    out.message = annotations
        .get("description")
        .or(summary)
        .cloned()
        .or(text_field(root, "message", "")?.map(str::to_owned));
    out.test = labels.get("alertname").is_some_and(|n| n == "TestAlert")
        && labels.get("instance").is_some_and(|i| i == "Grafana");
    for key in ["generatorURL", "silenceURL", "dashboardURL", "panelURL"] {
        push_link(&mut out.links, text_field(a, key, p)?);
    }
    for key in ["runbook_url", "dashboard_url"] {
        push_link(&mut out.links, annotations.get(key).map(String::as_str));
    }
    out.tags = labels;
    Ok(out)
}

fn legacy(root: &Map<String, Value>) -> Result<Alert, PayloadError> {
    let rule = id_field(root, "ruleId", "")?
        .ok_or_else(|| PayloadError::new("ruleId", "the legacy alert rule id (a number)"))?;
    let org = id_field(root, "orgId", "")?.unwrap_or_else(|| "0".to_owned());
    let status = match str_field(root, "state", "")?.map(str::trim) {
        Some("alerting") => AlertStatus::Firing,
        Some("ok") => AlertStatus::Resolved,
        Some("paused" | "pending" | "no_data") => AlertStatus::Ignored,
        _ => {
            return Err(PayloadError::new(
                "state",
                "one of \"alerting\", \"ok\", \"pending\", \"paused\", \"no_data\"",
            ))
        }
    };
    let tags = string_map(root, "tags", "")?;
    let severity = tags
        .get("severity")
        .and_then(|s| Severity::from_label(s))
        .unwrap_or(DEFAULT_SEVERITY);
    let title = text_field(root, "title", "")?
        .or(text_field(root, "ruleName", "")?)
        .unwrap_or("Grafana legacy alert");
    let mut out = alert(format!("{org}:{rule}"), status, title, severity);
    out.message = text_field(root, "message", "")?.map(str::to_owned);
    out.tags = tags;
    for key in ["ruleUrl", "rule_url"] {
        push_link(&mut out.links, text_field(root, key, "")?);
    }
    Ok(out)
}

fn oncall(root: &Map<String, Value>) -> Result<Alert, PayloadError> {
    let group = obj_field(root, "alert_group", "")?.expect("checked by is_oncall_payload");
    let event = obj_field(root, "event", "")?.expect("checked by is_oncall_payload");
    let id = match id_field(group, "id", "alert_group")? {
        Some(id) => id,
        None => id_field(root, "alert_group_id", "")?.ok_or_else(|| {
            PayloadError::new("alert_group.id", "the OnCall alert group id (a string)")
        })?,
    };
    let event_type = str_field(event, "type", "event")?
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let state = str_field(group, "state", "alert_group")?.unwrap_or("");
    let status = if event_type == "resolve" || state.eq_ignore_ascii_case("resolved") {
        AlertStatus::Resolved
    } else if matches!(
        event_type.as_str(),
        "escalation" | "alert group created" | "alert_group_created" | "firing" | "new"
    ) {
        AlertStatus::Firing
    } else if event_type == "acknowledge" {
        AlertStatus::Acknowledged
    } else {
        // unacknowledge, silence, unsilence, unresolve, status change: no new incident, and
        // nothing to record.
        AlertStatus::StateChange
    };

    let payload = obj_field(root, "alert_payload", "")?;
    let mut tags = std::collections::BTreeMap::new();
    match group.get("labels") {
        Some(Value::Array(labels)) => add_oncall_labels(&mut tags, labels)?,
        Some(Value::Object(_)) => tags.extend(string_map(group, "labels", "alert_group")?),
        _ => {}
    }
    if let Some(p) = payload {
        for key in ["labels", "commonLabels"] {
            if let Some(Value::Object(_)) = p.get(key) {
                tags.extend(string_map(p, key, "alert_payload")?);
            }
        }
    }
    let severity = tags
        .get("severity")
        .and_then(|s| Severity::from_label(s))
        .unwrap_or(DEFAULT_SEVERITY);
    let title = text_field(group, "title", "alert_group")?.unwrap_or("Grafana OnCall alert group");
    let mut out = alert(id, status, title, severity);
    out.tags = tags;
    if let Some(links) = obj_field(group, "permalinks", "alert_group")? {
        for key in ["web", "slack", "telegram"] {
            push_link(
                &mut out.links,
                text_field(links, key, "alert_group.permalinks")?,
            );
        }
    }
    if let Some(p) = payload {
        out.message = text_field(p, "message", "alert_payload")?
            .or(text_field(p, "description", "alert_payload")?)
            .map(str::to_owned);
    }
    Ok(out)
}

/// OnCall labels arrive as `[{"key": {"name": ..}, "value": {"name": ..}}]`.
fn add_oncall_labels(
    tags: &mut std::collections::BTreeMap<String, String>,
    labels: &[Value],
) -> Result<(), PayloadError> {
    for (i, l) in labels.iter().enumerate() {
        let name = |side: &str| {
            l.get(side).and_then(|s| match s {
                Value::Object(o) => o.get("name").and_then(Value::as_str),
                Value::String(s) => Some(s.as_str()),
                _ => None,
            })
        };
        match (name("key"), name("value")) {
            (Some(k), Some(v)) => {
                tags.insert(k.to_owned(), v.to_owned());
            }
            _ => {
                add_pair_tags(
                    tags,
                    std::slice::from_ref(l),
                    &format!("alert_group.labels[{i}]"),
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alerts(v: Value) -> Vec<Alert> {
        let Value::Object(m) = v else { unreachable!() };
        match normalize(&m).unwrap() {
            Normalized::Alerts(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_alert_has_its_own_status() {
        let a = alerts(json!({"status":"firing","alerts":[
            {"status":"firing","fingerprint":"aa","labels":{"alertname":"A","severity":"warning"}},
            {"status":"resolved","fingerprint":"bb","labels":{"alertname":"B"},"annotations":{"summary":"B down"}}]}));
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].severity, Severity::Medium);
        assert_eq!(a[0].title, "A");
        assert_eq!(a[1].status, AlertStatus::Resolved);
        assert_eq!(a[1].title, "B down");
        assert_eq!(a[1].severity, Severity::High);
    }

    #[test]
    fn missing_fingerprint_names_the_alert() {
        let Value::Object(m) =
            json!({"alerts":[{"status":"firing","fingerprint":"a"},{"status":"firing"}]})
        else {
            unreachable!()
        };
        assert_eq!(normalize(&m).unwrap_err().field, "alerts[1].fingerprint");
    }

    #[test]
    fn legacy_states() {
        let a = alerts(json!({"ruleId":3,"orgId":1,"state":"alerting","title":"[Alerting] CPU"}));
        assert_eq!(a[0].source_alert_id, "1:3");
        assert_eq!(a[0].status, AlertStatus::Firing);
        let a = alerts(json!({"ruleId":3,"state":"pending"}));
        assert_eq!(a[0].status, AlertStatus::Ignored);
        assert_eq!(a[0].source_alert_id, "0:3");
    }

    #[test]
    fn oncall_events() {
        let base = |t: &str, state: &str| json!({"event":{"type":t},"alert_group":{"id":"IXYZ","state":state,"title":"DB down"},"alert_group_id":"IXYZ","alert_payload":{"commonLabels":{"severity":"critical"}}});
        let a = alerts(base("escalation", "firing"));
        assert_eq!(
            (a[0].status, a[0].severity),
            (AlertStatus::Firing, Severity::Critical)
        );
        assert_eq!(
            alerts(base("acknowledge", "acknowledged"))[0].status,
            AlertStatus::Acknowledged
        );
        assert_eq!(
            alerts(base("resolve", "resolved"))[0].status,
            AlertStatus::Resolved
        );
        assert_eq!(
            alerts(base("silence", "silenced"))[0].status,
            AlertStatus::StateChange
        );
    }
}
