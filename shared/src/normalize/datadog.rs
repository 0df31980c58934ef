//! Datadog webhooks: the product page's shape, Datadog's default template and custom templates.

use serde_json::{Map, Value};

use super::{add_tag, alert, id_field, push_link, text_field, type_name, PayloadError};
use crate::model::{Alert, AlertStatus, Severity};

pub(super) fn normalize(root: &Map<String, Value>) -> Result<Alert, PayloadError> {
    // docs/contract.md#what-identifies-an-alert: alert_cycle_key links a trigger to its recovery,
    // so it is the best dedup key.
    let mut source_id = None;
    for key in ["alert_cycle_key", "alert_id", "aggreg_key", "id"] {
        if let Some(id) = id_field(root, key, "")? {
            source_id = Some(id);
            break;
        }
    }
    let source_id = source_id.ok_or_else(|| {
        PayloadError::new(
            "alert_cycle_key",
            "an alert id: one of alert_cycle_key ($ALERT_CYCLE_KEY), alert_id ($ALERT_ID), \
             aggreg_key ($AGGREG_KEY) or id ($ID) must be a non-empty string",
        )
    })?;

    let title = text_field(root, "title", "")?;
    let transition = text_field(root, "alert_transition", "")?;
    let alert_type = text_field(root, "alert_type", "")?;
    let priority = match text_field(root, "priority", "")? {
        Some(p) => Some(p),
        None => text_field(root, "alert_priority", "")?,
    };
    // The default template only carries "[P1] [Triggered] ..." style prefixes in its title.
    let prefixes: Vec<&str> = title.map(bracket_prefixes).unwrap_or_default();

    let status = if is_recovery(transition, alert_type, &prefixes) {
        AlertStatus::Resolved
    } else {
        AlertStatus::Firing
    };

    let severity = priority
        .and_then(priority_severity)
        .or_else(|| prefixes.iter().find_map(|p| priority_severity(p)))
        .or_else(|| alert_type.and_then(type_severity))
        .unwrap_or(Severity::Medium);

    let mut a = alert(
        source_id,
        status,
        title.unwrap_or("Datadog alert"),
        severity,
    );
    a.message = match text_field(root, "text", "")? {
        Some(t) => Some(t.to_owned()),
        None => text_field(root, "body", "")?.map(str::to_owned),
    };
    match root.get("tags") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => s.split(',').for_each(|t| add_tag(&mut a.tags, t)),
        Some(Value::Array(items)) => {
            for (i, t) in items.iter().enumerate() {
                match t {
                    Value::String(s) => add_tag(&mut a.tags, s),
                    other => {
                        return Err(PayloadError::new(
                            format!("tags[{i}]"),
                            format!("expected a \"key:value\" string, got {}", type_name(other)),
                        ))
                    }
                }
            }
        }
        Some(other) => {
            return Err(PayloadError::new(
                "tags",
                format!(
                    "expected a comma-separated string ($TAGS) or an array of strings, got {}",
                    type_name(other)
                ),
            ))
        }
    }
    for key in ["link", "url", "snapshot"] {
        push_link(&mut a.links, text_field(root, key, "")?);
    }
    Ok(a)
}

/// `[Recovered]`, `alert_transition: Recovered` or `alert_type: success`.
fn is_recovery(transition: Option<&str>, alert_type: Option<&str>, prefixes: &[&str]) -> bool {
    match transition {
        Some(t) => t.trim().eq_ignore_ascii_case("recovered"),
        None => {
            alert_type.is_some_and(|t| t.trim().eq_ignore_ascii_case("success"))
                || prefixes.iter().any(|p| {
                    // "[Recovered]" or "[Recovered on {host:web-1}]", after an optional "[P2]".
                    p.get(..9)
                        .is_some_and(|w| w.eq_ignore_ascii_case("recovered"))
                })
        }
    }
}

/// Monitor priority P1..P5.
fn priority_severity(p: &str) -> Option<Severity> {
    Some(match p.trim().to_ascii_uppercase().as_str() {
        "P1" => Severity::Critical,
        "P2" => Severity::High,
        "P3" => Severity::Medium,
        "P4" => Severity::Low,
        "P5" => Severity::Info,
        _ => return None,
    })
}

fn type_severity(t: &str) -> Option<Severity> {
    Some(match t.trim().to_ascii_lowercase().as_str() {
        "error" => Severity::High,
        "warning" => Severity::Medium,
        "info" | "success" => Severity::Info,
        _ => return None,
    })
}

/// The leading `[...]` groups of an event title: `[P1] [Triggered] CPU` -> ["P1", "Triggered"].
fn bracket_prefixes(title: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = title.trim_start();
    while let Some(inner) = rest.strip_prefix('[') {
        let Some(end) = inner.find(']') else { break };
        out.push(inner[..end].trim());
        rest = inner[end + 1..].trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(v: Value) -> Alert {
        let Value::Object(m) = v else { unreachable!() };
        normalize(&m).unwrap()
    }

    #[test]
    fn page_shape() {
        let a = run(
            json!({"alert_id":"12345678","title":"High error rate","text":"x",
            "alert_type":"error","priority":"P1","tags":"env:production,service:payment-service,team:platform"}),
        );
        assert_eq!(a.source_alert_id, "12345678");
        assert_eq!(a.severity, Severity::Critical);
        assert_eq!(a.tags["team"], "platform");
        assert_eq!(a.status, AlertStatus::Firing);
    }

    #[test]
    fn default_template_reads_title_prefixes() {
        let a = run(
            json!({"id":"7","title":"[P2] [Triggered] Disk full","body":"b","event_type":"query_alert_monitor"}),
        );
        assert_eq!(a.severity, Severity::High);
        assert_eq!(a.status, AlertStatus::Firing);
        let a = run(json!({"id":"8","title":"[Recovered] Disk full"}));
        assert_eq!(a.status, AlertStatus::Resolved);
        assert_eq!(a.severity, Severity::Medium);
        let a = run(json!({"id":"9","title":"[P2] [Recovered on {host:web-1}] Disk full"}));
        assert_eq!(
            (a.status, a.severity),
            (AlertStatus::Resolved, Severity::High)
        );
    }

    #[test]
    fn cycle_key_wins_and_recovered_resolves() {
        let a = run(
            json!({"alert_id":"1","alert_cycle_key":"c1","alert_transition":"Recovered","alert_type":"success"}),
        );
        assert_eq!(a.source_alert_id, "c1");
        assert_eq!(a.status, AlertStatus::Resolved);
        let a = run(
            json!({"alert_id":"1","alert_cycle_key":"","alert_transition":"No Data","alert_priority":""}),
        );
        assert_eq!(a.source_alert_id, "1");
        assert_eq!(a.status, AlertStatus::Firing);
    }

    #[test]
    fn missing_id_is_a_clear_error() {
        let Value::Object(m) = json!({"title":"x"}) else {
            unreachable!()
        };
        let e = normalize(&m).unwrap_err();
        assert!(e.expected.contains("$ALERT_ID"), "{e}");
    }
}
