//! The generic shape for tools without a dedicated provider
//! (docs/contract.md#what-identifies-an-alert).

use serde_json::{Map, Value};

use super::{alert, arr_field, str_field, string_map, text_field, type_name, PayloadError};
use crate::model::{Alert, AlertStatus, Severity};

pub(super) fn normalize(root: &Map<String, Value>) -> Result<Alert, PayloadError> {
    let id = text_field(root, "sourceAlertId", "")?.ok_or_else(|| {
        PayloadError::new("sourceAlertId", "a non-empty string identifying the alert")
    })?;
    let title = text_field(root, "title", "")?
        .ok_or_else(|| PayloadError::new("title", "a non-empty string"))?;
    let status = match str_field(root, "status", "")? {
        None => AlertStatus::Firing,
        Some(s) if s.eq_ignore_ascii_case("firing") => AlertStatus::Firing,
        Some(s) if s.eq_ignore_ascii_case("resolved") => AlertStatus::Resolved,
        Some(other) => {
            return Err(PayloadError::new(
                "status",
                format!("\"firing\" or \"resolved\" (got \"{other}\")"),
            ))
        }
    };
    let severity = match str_field(root, "severity", "")? {
        None => Severity::Medium,
        Some(s) => Severity::from_label(s).ok_or_else(|| {
            PayloadError::new(
                "severity",
                format!("one of critical, high, medium, low, info (got \"{s}\")"),
            )
        })?,
    };
    let mut a = alert(id.to_owned(), status, title, severity);
    a.message = str_field(root, "message", "")?.map(str::to_owned);
    a.service = text_field(root, "service", "")?.map(str::to_owned);
    a.environment = text_field(root, "environment", "")?.map(str::to_owned);
    a.tags = string_map(root, "tags", "")?;
    if let Some(links) = arr_field(root, "links", "")? {
        for (i, l) in links.iter().enumerate() {
            match l {
                Value::String(s) => a.links.push(s.clone()),
                other => {
                    return Err(PayloadError::new(
                        format!("links[{i}]"),
                        format!("expected a URL string, got {}", type_name(other)),
                    ))
                }
            }
        }
    }
    a.test = match root.get("test") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(PayloadError::new(
                "test",
                format!("expected true or false, got {}", type_name(other)),
            ))
        }
    };
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_and_errors() {
        let Value::Object(m) =
            json!({"sourceAlertId":"a","title":"t","severity":"P2","tags":{"team":"x","n":3}})
        else {
            unreachable!()
        };
        let a = normalize(&m).unwrap();
        assert_eq!((a.severity, a.tags["n"].as_str()), (Severity::High, "3"));
        let Value::Object(m) = json!({"sourceAlertId":"a","title":"t","status":"open"}) else {
            unreachable!()
        };
        assert_eq!(normalize(&m).unwrap_err().field, "status");
        let Value::Object(m) = json!({"sourceAlertId":"a","title":"t","tags":{"x":{"y":1}}}) else {
            unreachable!()
        };
        assert_eq!(normalize(&m).unwrap_err().field, "tags.x");
    }
}
