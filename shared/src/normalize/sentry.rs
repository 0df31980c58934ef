//! Sentry: the legacy WebHooks plugin and the integration platform's `issue`, `event_alert` and
//! `metric_alert` resources (chosen by the `Sentry-Hook-Resource` header).

use serde_json::{Map, Value};

use super::{
    add_pair_tags, alert, arr_field, id_field, obj_field, push_link, str_field, text_field,
    Normalized, PayloadError,
};
use crate::model::{Alert, AlertStatus, Severity};

pub(super) fn normalize(
    root: &Map<String, Value>,
    resource: Option<&str>,
) -> Result<Normalized, PayloadError> {
    let resource = resource.map(str::trim).filter(|r| !r.is_empty());
    let one = |a: Alert| Ok(Normalized::Alerts(vec![a]));
    match resource {
        None => one(legacy(root)?),
        Some("issue") => one(issue(root)?),
        Some("event_alert") => one(event_alert(root)?),
        Some("metric_alert") => one(metric_alert(root)?),
        Some(other) => Ok(Normalized::NotAnAlert {
            what: format!("Sentry `{other}` webhook"),
        }),
    }
}

/// Sentry `level` (docs/contract.md#severity); unknown levels count as error.
fn level_severity(level: Option<&str>) -> Severity {
    match level.map(|l| l.trim().to_ascii_lowercase()).as_deref() {
        Some("fatal") => Severity::Critical,
        Some("warning") => Severity::Medium,
        Some("info" | "debug") => Severity::Low,
        _ => Severity::High,
    }
}

fn data(root: &Map<String, Value>) -> Result<&Map<String, Value>, PayloadError> {
    obj_field(root, "data", "")?.ok_or_else(|| {
        PayloadError::new(
            "data",
            "an object (Sentry integration webhooks carry `data`)",
        )
    })
}

fn legacy(root: &Map<String, Value>) -> Result<Alert, PayloadError> {
    let id = id_field(root, "id", "")?.ok_or_else(|| {
        PayloadError::new(
            "id",
            "the Sentry issue id; for integration-platform webhooks send the Sentry-Hook-Resource header",
        )
    })?;
    let title = text_field(root, "message", "")?
        .or(text_field(root, "culprit", "")?)
        .unwrap_or("Sentry issue");
    let mut a = alert(
        id,
        AlertStatus::Firing,
        title,
        level_severity(str_field(root, "level", "")?),
    );
    a.message = text_field(root, "culprit", "")?.map(str::to_owned);
    if let Some(event) = obj_field(root, "event", "")? {
        if let Some(tags) = arr_field(event, "tags", "event")? {
            add_pair_tags(&mut a.tags, tags, "event.tags")?;
        }
        if let Some(env) = text_field(event, "environment", "event")? {
            a.environment = Some(env.to_owned());
        }
    }
    if let Some(p) = text_field(root, "project_slug", "")?.or(text_field(root, "project", "")?) {
        a.tags
            .entry("project".into())
            .or_insert_with(|| p.to_owned());
    }
    push_link(&mut a.links, text_field(root, "url", "")?);
    Ok(a)
}

fn issue(root: &Map<String, Value>) -> Result<Alert, PayloadError> {
    let issue = obj_field(data(root)?, "issue", "data")?
        .ok_or_else(|| PayloadError::new("data.issue", "the Sentry issue object"))?;
    let id = id_field(issue, "id", "data.issue")?
        .ok_or_else(|| PayloadError::new("data.issue.id", "the Sentry issue id"))?;
    let status = match str_field(root, "action", "")? {
        Some("resolved") => AlertStatus::Resolved,
        _ => AlertStatus::Firing,
    };
    let title = text_field(issue, "title", "data.issue")?.unwrap_or("Sentry issue");
    let mut a = alert(
        id,
        status,
        title,
        level_severity(str_field(issue, "level", "data.issue")?),
    );
    a.message = text_field(issue, "culprit", "data.issue")?.map(str::to_owned);
    if let Some(project) = obj_field(issue, "project", "data.issue")? {
        if let Some(slug) = text_field(project, "slug", "data.issue.project")? {
            a.tags.insert("project".into(), slug.to_owned());
        }
    }
    push_link(&mut a.links, text_field(issue, "web_url", "data.issue")?);
    Ok(a)
}

fn event_alert(root: &Map<String, Value>) -> Result<Alert, PayloadError> {
    let data = data(root)?;
    let event = obj_field(data, "event", "data")?
        .ok_or_else(|| PayloadError::new("data.event", "the Sentry event object"))?;
    let id = id_field(event, "issue_id", "data.event")?
        .ok_or_else(|| PayloadError::new("data.event.issue_id", "the Sentry issue id"))?;
    let title = text_field(event, "title", "data.event")?.unwrap_or("Sentry event alert");
    let mut a = alert(
        id,
        AlertStatus::Firing,
        title,
        level_severity(str_field(event, "level", "data.event")?),
    );
    a.message = text_field(event, "culprit", "data.event")?.map(str::to_owned);
    if let Some(tags) = arr_field(event, "tags", "data.event")? {
        add_pair_tags(&mut a.tags, tags, "data.event.tags")?;
    }
    if let Some(env) = text_field(event, "environment", "data.event")? {
        a.environment = Some(env.to_owned());
    }
    if let Some(rule) = text_field(data, "triggered_rule", "data")? {
        a.tags.insert("triggered_rule".into(), rule.to_owned());
    }
    push_link(&mut a.links, text_field(event, "web_url", "data.event")?);
    Ok(a)
}

fn metric_alert(root: &Map<String, Value>) -> Result<Alert, PayloadError> {
    let data = data(root)?;
    let incident = obj_field(data, "metric_alert", "data")?
        .ok_or_else(|| PayloadError::new("data.metric_alert", "the Sentry metric alert object"))?;
    let id = id_field(incident, "id", "data.metric_alert")?
        .ok_or_else(|| PayloadError::new("data.metric_alert.id", "the metric alert id"))?;
    let (status, severity) = match str_field(root, "action", "")? {
        Some("critical") => (AlertStatus::Firing, Severity::Critical),
        Some("warning") => (AlertStatus::Firing, Severity::Medium),
        Some("resolved") => (AlertStatus::Resolved, Severity::Medium),
        _ => {
            return Err(PayloadError::new(
                "action",
                "\"critical\", \"warning\" or \"resolved\"",
            ))
        }
    };
    let title = text_field(data, "description_title", "data")?
        .or(text_field(incident, "title", "data.metric_alert")?)
        .unwrap_or("Sentry metric alert");
    let mut a = alert(id, status, title, severity);
    a.message = text_field(data, "description_text", "data")?.map(str::to_owned);
    push_link(&mut a.links, text_field(data, "web_url", "data")?);
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(v: Value, res: Option<&str>) -> Alert {
        let Value::Object(m) = v else { unreachable!() };
        match normalize(&m, res).unwrap() {
            Normalized::Alerts(mut a) => a.remove(0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resources() {
        let a = one(
            json!({"action":"resolved","data":{"issue":{"id":"42","title":"T","level":"error"}}}),
            Some("issue"),
        );
        assert_eq!(
            (a.source_alert_id.as_str(), a.status),
            ("42", AlertStatus::Resolved)
        );
        let a = one(
            json!({"action":"triggered","data":{"event":{"issue_id":"9","level":"fatal","tags":[["environment","prod"]]}}}),
            Some("event_alert"),
        );
        assert_eq!(
            (a.severity, a.tags["environment"].as_str()),
            (Severity::Critical, "prod")
        );
        let a = one(
            json!({"action":"warning","data":{"metric_alert":{"id":"7"},"description_title":"Warning: p95"}}),
            Some("metric_alert"),
        );
        assert_eq!(
            (a.severity, a.title.as_str()),
            (Severity::Medium, "Warning: p95")
        );
        let Value::Object(m) = json!({"action":"created","data":{}}) else {
            unreachable!()
        };
        assert!(matches!(
            normalize(&m, Some("installation")).unwrap(),
            Normalized::NotAnAlert { .. }
        ));
    }
}
