//! The PagerDuty Events API v2 (`event_action` trigger, acknowledge or resolve), so any tool that
//! can page PagerDuty can send here unchanged (docs/senders.md#pagerduty-events-v2).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{alert, arr_field, obj_field, push_link, str_field, text_field, type_name};
use super::{Normalized, PayloadError};
use crate::model::{AlertStatus, Severity};

/// Longest `dedup_key` PagerDuty accepts, in characters.
const MAX_DEDUP_KEY_CHARS: usize = 255;

/// PagerDuty's four severities.
fn severity(s: &str) -> Option<Severity> {
    Some(match s {
        "critical" => Severity::Critical,
        "error" => Severity::High,
        "warning" => Severity::Medium,
        "info" => Severity::Info,
        _ => return None,
    })
}

/// The routing key of an Events v2 body, when it has one: it doubles as the API key when a
/// sender can set nothing but the body (docs/contract.md#authentication).
pub fn routing_key(root: &Map<String, Value>) -> Option<&str> {
    root.get("routing_key")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// A `dedup_key` for a trigger that came without one: PagerDuty makes one up and returns it, so
/// the sender can acknowledge and resolve with it later.
fn new_dedup_key() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

pub(super) fn normalize(root: &Map<String, Value>) -> Result<Normalized, PayloadError> {
    let action = str_field(root, "event_action", "")?.map(str::trim);
    let status = match action {
        Some("trigger") => AlertStatus::Firing,
        Some("acknowledge") => AlertStatus::Acknowledged,
        Some("resolve") => AlertStatus::Resolved,
        _ => {
            return Err(PayloadError::new(
                "event_action",
                "\"trigger\", \"acknowledge\" or \"resolve\" (PagerDuty Events API v2)",
            ))
        }
    };
    let dedup_key =
        match text_field(root, "dedup_key", "")? {
            Some(k) if k.chars().count() > MAX_DEDUP_KEY_CHARS => {
                return Err(PayloadError::new(
                    "dedup_key",
                    format!("at most {MAX_DEDUP_KEY_CHARS} characters"),
                ))
            }
            Some(k) => k.to_owned(),
            None if status == AlertStatus::Firing => new_dedup_key(),
            None => return Err(PayloadError::new(
                "dedup_key",
                "the dedup_key of the trigger to acknowledge or resolve (answered to the trigger)",
            )),
        };
    if status != AlertStatus::Firing {
        // Acknowledge and resolve carry no payload; the title is the incident's.
        return Ok(Normalized::Alerts(vec![alert(
            dedup_key,
            status,
            "PagerDuty event",
            Severity::Info,
        )]));
    }
    let payload = obj_field(root, "payload", "")?.ok_or_else(|| {
        PayloadError::new(
            "payload",
            "an object with summary, source and severity (required for a trigger)",
        )
    })?;
    let summary = text_field(payload, "summary", "payload")?
        .ok_or_else(|| PayloadError::new("payload.summary", "a non-empty string"))?;
    let source = text_field(payload, "source", "payload")?.ok_or_else(|| {
        PayloadError::new(
            "payload.source",
            "a non-empty string (the affected host or service)",
        )
    })?;
    let sev = str_field(payload, "severity", "payload")?
        .map(str::trim)
        .and_then(severity)
        .ok_or_else(|| {
            PayloadError::new(
                "payload.severity",
                "\"critical\", \"error\", \"warning\" or \"info\"",
            )
        })?;
    let mut out = alert(dedup_key, status, summary, sev);

    let mut tags = BTreeMap::new();
    tags.insert("source".to_owned(), source.to_owned());
    for key in ["component", "group", "class"] {
        if let Some(v) = text_field(payload, key, "payload")? {
            tags.insert(key.to_owned(), v.to_owned());
        }
    }
    match payload.get("custom_details") {
        None | Some(Value::Null) => {}
        Some(Value::Object(details)) => {
            // Scalars become tags (so `service` and `env` there name the incident's);
            // everything is kept in the message.
            for (k, v) in details {
                match v {
                    Value::String(s) => tags.entry(k.clone()).or_insert_with(|| s.clone()),
                    Value::Number(_) | Value::Bool(_) => {
                        tags.entry(k.clone()).or_insert_with(|| v.to_string())
                    }
                    _ => continue,
                };
            }
            out.message = Some(Value::Object(details.clone()).to_string());
        }
        Some(Value::String(s)) => out.message = Some(s.clone()).filter(|s| !s.trim().is_empty()),
        Some(other) => out.message = Some(other.to_string()),
    }
    out.service = tags
        .get("service")
        .cloned()
        .or_else(|| tags.get("component").cloned());
    out.tags = tags;

    for (list, href) in [("links", "href"), ("images", "href")] {
        if let Some(items) = arr_field(root, list, "")? {
            for (i, item) in items.iter().enumerate() {
                let Value::Object(o) = item else {
                    return Err(PayloadError::new(
                        format!("{list}[{i}]"),
                        format!("expected an object with {href}, got {}", type_name(item)),
                    ));
                };
                push_link(
                    &mut out.links,
                    text_field(o, href, &format!("{list}[{i}]"))?,
                );
            }
        }
    }
    push_link(&mut out.links, text_field(root, "client_url", "")?);
    Ok(Normalized::Alerts(vec![out]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Alert;
    use serde_json::json;

    fn one(v: Value) -> Result<Alert, PayloadError> {
        let Value::Object(m) = v else { unreachable!() };
        match normalize(&m)? {
            Normalized::Alerts(mut a) => Ok(a.remove(0)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_trigger_keeps_every_field() {
        let a = one(
            json!({"routing_key":"k","event_action":"trigger","dedup_key":"db-1",
            "payload":{"summary":"DB CPU 99%","source":"db-1.prod","severity":"error",
              "component":"postgres","group":"checkout","class":"cpu",
              "custom_details":{"env":"prod","cpu":99.1,"nested":{"a":1}}},
            "links":[{"href":"https://grafana/d/1","text":"dash"}],
            "images":[{"src":"https://img/x.png","href":"https://img/page"}],
            "client":"Checkly","client_url":"https://checkly/1"}),
        )
        .unwrap();
        assert_eq!(a.source_alert_id, "db-1");
        assert_eq!(
            (a.status, a.severity),
            (AlertStatus::Firing, Severity::High)
        );
        assert_eq!(a.title, "DB CPU 99%");
        assert_eq!(a.tags["source"], "db-1.prod");
        assert_eq!(a.tags["group"], "checkout");
        assert_eq!(a.tags["cpu"], "99.1");
        assert_eq!(a.service.as_deref(), Some("postgres"));
        assert!(a.message.as_deref().unwrap().contains("nested"));
        assert_eq!(
            a.links,
            [
                "https://grafana/d/1",
                "https://img/page",
                "https://checkly/1"
            ]
        );
    }

    #[test]
    fn dedup_keys_are_made_for_triggers_only() {
        let p = json!({"summary":"s","source":"h","severity":"info"});
        let a = one(json!({"event_action":"trigger","payload":p})).unwrap();
        let b = one(json!({"event_action":"trigger","payload":p})).unwrap();
        assert_eq!(a.source_alert_id.len(), 32);
        assert_ne!(a.source_alert_id, b.source_alert_id);
        let e = one(json!({"event_action":"resolve"})).unwrap_err();
        assert_eq!(e.field, "dedup_key");
        let r = one(json!({"event_action":"acknowledge","dedup_key":"x"})).unwrap();
        assert_eq!(r.status, AlertStatus::Acknowledged);
    }

    #[test]
    fn long_link_lists_are_cut_at_the_cap() {
        let links: Vec<Value> = (0..200)
            .map(|i| json!({"href": format!("https://x/{i}")}))
            .collect();
        let a = one(
            json!({"event_action":"trigger","dedup_key":"k","links":links,
            "payload":{"summary":"s","source":"h","severity":"info"}}),
        )
        .unwrap();
        assert_eq!(a.links.len(), crate::normalize::MAX_LINKS);
        assert_eq!(a.links[0], "https://x/0");
    }

    #[test]
    fn required_fields_are_named() {
        let e = one(json!({"event_action":"trigger","payload":{"source":"h","severity":"info"}}))
            .unwrap_err();
        assert_eq!(e.field, "payload.summary");
        let e = one(json!({"event_action":"trigger","payload":{"summary":"s","source":"h","severity":"high"}}))
            .unwrap_err();
        assert_eq!(e.field, "payload.severity");
        let e = one(json!({"event_action":"trigger"})).unwrap_err();
        assert_eq!(e.field, "payload");
        let e = one(json!({"event_action":"page"})).unwrap_err();
        assert_eq!(e.field, "event_action");
        let e = one(json!({"event_action":"resolve","dedup_key":"x".repeat(256)})).unwrap_err();
        assert_eq!(e.field, "dedup_key");
    }
}
