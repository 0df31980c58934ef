//! Provider normalisers: each turns one provider's JSON payload into [`Alert`]s
//! (docs/contract.md#what-identifies-an-alert).
//!
//! They work on an already parsed `serde_json` object and never panic on shape: every field they
//! read is checked, and a wrong type becomes a [`PayloadError`] naming the field and what was
//! expected, which the HTTP layer answers with 400 `invalid_payload`.

mod alertmanager;
mod cloudwatch;
mod datadog;
mod generic;
mod grafana;
mod pagerduty;
mod sentry;

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::model::{Alert, AlertStatus, Provider, Severity};

pub use alertmanager::TRUNCATED_TAG;
pub use grafana::is_oncall_payload;
pub use pagerduty::routing_key;

/// Longest accepted `sourceAlertId`, in bytes.
pub const MAX_SOURCE_ALERT_ID_BYTES: usize = 1024;

/// A payload field that is missing or of the wrong type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {expected}")]
pub struct PayloadError {
    /// JSON path of the field, e.g. `alerts[2].fingerprint`.
    pub field: String,
    /// What the field should have been.
    pub expected: String,
}

impl PayloadError {
    pub fn new(field: impl Into<String>, expected: impl Into<String>) -> Self {
        PayloadError {
            field: field.into(),
            expected: expected.into(),
        }
    }
}

/// What a payload turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Normalized {
    /// One or more alerts (never empty).
    Alerts(Vec<Alert>),
    /// A sender event that is not an alert (Sentry `installation`, an SNS confirmation): 200.
    NotAnAlert { what: String },
}

/// Request facts a normaliser may need besides the body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    /// `Sentry-Hook-Resource` header.
    pub sentry_resource: Option<&'a str>,
    /// A verified signature covers every byte of `root`. Without one, the top-level
    /// `sourceAlertId` override is ignored and the alerts are marked [`Alert::unsigned`], which
    /// keeps their dedup keys apart from signed ones (docs/security.md).
    pub signed: bool,
}

/// Normalises `root` (the request body, already known to be a JSON object) for `provider`.
pub fn normalize(
    provider: Provider,
    root: &Map<String, Value>,
    ctx: Context<'_>,
) -> Result<Normalized, PayloadError> {
    let mut normalized = match provider {
        Provider::Datadog => Normalized::Alerts(vec![datadog::normalize(root)?]),
        Provider::Grafana => grafana::normalize(root)?,
        Provider::Cloudwatch => cloudwatch::normalize(root)?,
        Provider::Sentry => sentry::normalize(root, ctx.sentry_resource)?,
        Provider::Generic => Normalized::Alerts(vec![generic::normalize(root)?]),
        Provider::Alertmanager => alertmanager::normalize(root)?,
        Provider::Pagerduty => pagerduty::normalize(root)?,
    };
    if let Normalized::Alerts(alerts) = &mut normalized {
        if alerts.is_empty() {
            return Err(PayloadError::new(
                "alerts",
                "at least one alert (the payload carried none)",
            ));
        }
        // A top-level `sourceAlertId` wins over the provider's own id, but only when a signature
        // covers it: otherwise anyone holding a captured request could aim it at any incident.
        if let Some(id) = str_field(root, "sourceAlertId", "")? {
            if !id.is_empty() && ctx.signed {
                for a in alerts.iter_mut() {
                    a.source_alert_id = id.to_owned();
                }
            }
        }
        for (i, a) in alerts.iter_mut().enumerate() {
            // Dedup keys live in table keys (DynamoDB allows 2 KB); a longer id is a mistake.
            if a.source_alert_id.len() > MAX_SOURCE_ALERT_ID_BYTES {
                let field = if ctx.signed && root.contains_key("sourceAlertId") {
                    "sourceAlertId".to_owned()
                } else {
                    format!("alert {i} id")
                };
                return Err(PayloadError::new(
                    field,
                    format!(
                        "an alert id of at most {MAX_SOURCE_ALERT_ID_BYTES} bytes (got {})",
                        a.source_alert_id.len()
                    ),
                ));
            }
            a.derive_service_environment();
            a.bound_fields();
            a.unsigned = !ctx.signed;
        }
    }
    Ok(normalized)
}

/// Joins a parent path and a field name for error messages.
fn path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Describes a JSON value's type for error messages.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An optional string field (absent or null = None).
fn str_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<Option<&'a str>, PayloadError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(PayloadError::new(
            path(parent, key),
            format!("expected a string, got {}", type_name(other)),
        )),
    }
}

/// An optional non-empty string field.
fn text_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<Option<&'a str>, PayloadError> {
    Ok(str_field(obj, key, parent)?.filter(|s| !s.trim().is_empty()))
}

/// An optional identifier: a non-empty string or an integer (senders differ in how they quote ids).
fn id_field(
    obj: &Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<Option<String>, PayloadError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(other) => Err(PayloadError::new(
            path(parent, key),
            format!("expected a string or integer id, got {}", type_name(other)),
        )),
    }
}

/// An optional object field.
fn obj_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<Option<&'a Map<String, Value>>, PayloadError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(PayloadError::new(
            path(parent, key),
            format!("expected an object, got {}", type_name(other)),
        )),
    }
}

/// An optional array field.
fn arr_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<Option<&'a Vec<Value>>, PayloadError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(other) => Err(PayloadError::new(
            path(parent, key),
            format!("expected an array, got {}", type_name(other)),
        )),
    }
}

/// A scalar rendered as a tag value; objects and arrays are refused.
fn scalar_string(v: &Value, field: impl FnOnce() -> String) -> Result<String, PayloadError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok(String::new()),
        other => Err(PayloadError::new(
            field(),
            format!("expected a string value, got {}", type_name(other)),
        )),
    }
}

/// An object of labels/tags as a string map.
fn string_map(
    obj: &Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<BTreeMap<String, String>, PayloadError> {
    let mut out = BTreeMap::new();
    if let Some(m) = obj_field(obj, key, parent)? {
        for (k, v) in m {
            out.insert(
                k.clone(),
                scalar_string(v, || format!("{}.{k}", path(parent, key)))?,
            );
        }
    }
    Ok(out)
}

/// Adds `key:value` tags (a bare `key` maps to "") to `tags`.
fn add_tag(tags: &mut BTreeMap<String, String>, tag: &str) {
    let tag = tag.trim();
    if tag.is_empty() {
        return;
    }
    match tag.split_once(':') {
        Some((k, v)) => tags.insert(k.trim().to_owned(), v.trim().to_owned()),
        None => tags.insert(tag.to_owned(), String::new()),
    };
}

/// `[["key","value"], ...]` (Sentry event tags) or `[{"key":..,"value":..}]` into `tags`.
fn add_pair_tags(
    tags: &mut BTreeMap<String, String>,
    list: &[Value],
    field: &str,
) -> Result<(), PayloadError> {
    for (i, item) in list.iter().enumerate() {
        match item {
            Value::Array(pair) if pair.len() == 2 => {
                if let (Value::String(k), v) = (&pair[0], &pair[1]) {
                    tags.insert(k.clone(), scalar_string(v, || format!("{field}[{i}][1]"))?);
                    continue;
                }
                return Err(PayloadError::new(
                    format!("{field}[{i}]"),
                    "expected a [key, value] pair of strings",
                ));
            }
            Value::Object(m) => {
                if let (Some(Value::String(k)), Some(v)) = (m.get("key"), m.get("value")) {
                    tags.insert(
                        k.clone(),
                        scalar_string(v, || format!("{field}[{i}].value"))?,
                    );
                    continue;
                }
                return Err(PayloadError::new(
                    format!("{field}[{i}]"),
                    "expected {\"key\": string, \"value\": string}",
                ));
            }
            Value::String(s) => add_tag(tags, s),
            other => {
                return Err(PayloadError::new(
                    format!("{field}[{i}]"),
                    format!("expected a [key, value] pair, got {}", type_name(other)),
                ))
            }
        }
    }
    Ok(())
}

/// One alert object of a notification, with its path for error messages.
type AlertObject<'a> = (String, &'a Map<String, Value>);

/// The objects of a notification's `alerts` array.
fn alert_objects(alerts: &[Value]) -> Result<Vec<AlertObject<'_>>, PayloadError> {
    alerts
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = format!("alerts[{i}]");
            match item {
                Value::Object(a) => Ok((field, a)),
                other => Err(PayloadError::new(
                    field,
                    format!("expected an alert object, got {}", type_name(other)),
                )),
            }
        })
        .collect()
}

/// The `fingerprint` and `status` of one alert of a Prometheus-style notification (Grafana
/// unified alerting, Alertmanager): both required, the status `firing` or `resolved`.
fn fingerprint_and_status(
    a: &Map<String, Value>,
    p: &str,
    sender: &str,
) -> Result<(String, AlertStatus), PayloadError> {
    let fingerprint = id_field(a, "fingerprint", p)?.ok_or_else(|| {
        PayloadError::new(
            format!("{p}.fingerprint"),
            format!("a non-empty string ({sender} sends one per alert)"),
        )
    })?;
    let status = match str_field(a, "status", p)?.map(str::trim) {
        Some(s) if s.eq_ignore_ascii_case("firing") => AlertStatus::Firing,
        Some(s) if s.eq_ignore_ascii_case("resolved") => AlertStatus::Resolved,
        _ => {
            return Err(PayloadError::new(
                format!("{p}.status"),
                "\"firing\" or \"resolved\"",
            ))
        }
    };
    Ok((fingerprint, status))
}

/// A fresh alert with the fields every normaliser sets.
fn alert(source_alert_id: String, status: AlertStatus, title: &str, severity: Severity) -> Alert {
    let mut a = Alert {
        source_alert_id,
        status,
        title: String::new(),
        title_truncated: false,
        message: None,
        severity,
        service: None,
        environment: None,
        tags: BTreeMap::new(),
        links: Vec::new(),
        test: false,
        unsigned: false,
    };
    a.set_title(title);
    a
}

/// Most links an alert keeps; a sender's list beyond it is cut.
pub const MAX_LINKS: usize = 50;

/// Pushes a link when it is a non-empty string, new, and within [`MAX_LINKS`] (so a long list
/// costs no quadratic time).
fn push_link(links: &mut Vec<String>, link: Option<&str>) {
    if links.len() >= MAX_LINKS {
        return;
    }
    if let Some(l) = link.filter(|l| !l.trim().is_empty()) {
        if !links.iter().any(|x| x == l) {
            links.push(l.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn signed() -> Context<'static> {
        Context {
            signed: true,
            ..Context::default()
        }
    }

    #[test]
    fn top_level_source_alert_id_wins_only_when_signed() {
        let body = obj(json!({"sourceAlertId": "mine", "alert_id": "123", "title": "x"}));
        let Normalized::Alerts(a) = normalize(Provider::Datadog, &body, signed()).unwrap() else {
            panic!()
        };
        assert_eq!(a[0].source_alert_id, "mine");
        assert!(!a[0].unsigned);
        let Normalized::Alerts(a) =
            normalize(Provider::Datadog, &body, Context::default()).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            a[0].source_alert_id, "123",
            "an unsigned override is ignored"
        );
        assert!(a[0].unsigned);
    }

    #[test]
    fn wrong_types_name_the_field() {
        let body = obj(json!({"sourceAlertId": 5, "title": "x", "status": "firing"}));
        let err = normalize(Provider::Generic, &body, signed()).unwrap_err();
        assert_eq!(err.field, "sourceAlertId");
        assert!(err.expected.contains("string"), "{err}");
    }

    #[test]
    fn tags_parse_bare_and_pairs() {
        let mut t = BTreeMap::new();
        add_tag(&mut t, " env:prod ");
        add_tag(&mut t, "monitor");
        add_tag(&mut t, "url:http://x:1");
        assert_eq!(t["env"], "prod");
        assert_eq!(t["monitor"], "");
        assert_eq!(t["url"], "http://x:1");
    }
}
