//! CloudWatch alarms, either inside an Amazon SNS envelope (`Message` holds the alarm JSON as a
//! string) or posted bare. This module only reads payloads; SNS signature checks live elsewhere.

use serde_json::{Map, Value};

use super::{
    alert, arr_field, obj_field, push_link, scalar_string, str_field, text_field, Normalized,
    PayloadError,
};
use crate::model::{Alert, AlertStatus, Severity};

pub(super) fn normalize(root: &Map<String, Value>) -> Result<Normalized, PayloadError> {
    match str_field(root, "Type", "")? {
        Some("Notification") => {
            let message = str_field(root, "Message", "")?.ok_or_else(|| {
                PayloadError::new("Message", "the CloudWatch alarm as a JSON string")
            })?;
            let alarm: Value = serde_json::from_str(message).map_err(|e| {
                PayloadError::new(
                    "Message",
                    format!("the CloudWatch alarm as a JSON string (it did not parse: {e})"),
                )
            })?;
            let Value::Object(alarm) = alarm else {
                return Err(PayloadError::new(
                    "Message",
                    "a JSON object string holding the CloudWatch alarm",
                ));
            };
            let mut a = alarm_alert(&alarm, "Message")?;
            if let Some(topic) = text_field(root, "TopicArn", "")? {
                a.tags.insert("snsTopicArn".into(), topic.to_owned());
            }
            Ok(Normalized::Alerts(vec![a]))
        }
        Some(t @ ("SubscriptionConfirmation" | "UnsubscribeConfirmation")) => {
            Ok(Normalized::NotAnAlert {
                what: format!("SNS {t}"),
            })
        }
        Some(other) => Err(PayloadError::new(
            "Type",
            format!(
                "\"Notification\", \"SubscriptionConfirmation\" or \"UnsubscribeConfirmation\" (got \"{other}\")"
            ),
        )),
        None if root.contains_key("NewStateValue") || root.contains_key("AlarmArn") => {
            Ok(Normalized::Alerts(vec![alarm_alert(root, "")?]))
        }
        None => Err(PayloadError::new(
            "Type",
            "an SNS envelope (`Type`, `Message`) or a CloudWatch alarm (`AlarmArn`, `NewStateValue`)",
        )),
    }
}

fn alarm_alert(alarm: &Map<String, Value>, p: &str) -> Result<Alert, PayloadError> {
    let field = |k: &str| {
        if p.is_empty() {
            k.to_owned()
        } else {
            format!("{p}.{k}")
        }
    };
    let arn = text_field(alarm, "AlarmArn", p)?
        .ok_or_else(|| PayloadError::new(field("AlarmArn"), "the alarm's ARN (a string)"))?;
    let status = match str_field(alarm, "NewStateValue", p)? {
        Some("ALARM") => AlertStatus::Firing,
        Some("OK") => AlertStatus::Resolved,
        Some("INSUFFICIENT_DATA") => AlertStatus::StateChange,
        _ => {
            return Err(PayloadError::new(
                field("NewStateValue"),
                "\"ALARM\", \"OK\" or \"INSUFFICIENT_DATA\"",
            ))
        }
    };
    let name = text_field(alarm, "AlarmName", p)?.unwrap_or(arn);
    let mut a = alert(arn.to_owned(), status, name, Severity::High);
    a.message = text_field(alarm, "NewStateReason", p)?.map(str::to_owned);
    for (tag, key) in [
        ("region", "Region"),
        ("awsAccountId", "AWSAccountId"),
        ("alarmDescription", "AlarmDescription"),
        ("alarmRule", "AlarmRule"),
    ] {
        if let Some(v) = text_field(alarm, key, p)? {
            a.tags.insert(tag.into(), v.to_owned());
        }
    }
    if let Some(trigger) = obj_field(alarm, "Trigger", p)? {
        let tp = field("Trigger");
        for (tag, key) in [("namespace", "Namespace"), ("metricName", "MetricName")] {
            if let Some(v) = text_field(trigger, key, &tp)? {
                a.tags.insert(tag.into(), v.to_owned());
            }
        }
        if let Some(dims) = arr_field(trigger, "Dimensions", &tp)? {
            for (i, d) in dims.iter().enumerate() {
                if let (Some(Value::String(n)), Some(v)) = (d.get("name"), d.get("value")) {
                    a.tags.insert(
                        n.clone(),
                        scalar_string(v, || format!("{tp}.Dimensions[{i}].value"))?,
                    );
                }
            }
        }
    }
    if let Some(arn) = a.source_alert_id.strip_prefix("arn:aws:cloudwatch:") {
        // arn:aws:cloudwatch:<region>:<account>:alarm:<name> -> a console link an SRE can click.
        if let Some((region, _)) = arn.split_once(':') {
            let console = format!(
                "https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#alarmsV2:"
            );
            push_link(&mut a.links, Some(&console));
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelope_and_bare() {
        let alarm = json!({"AlarmName":"cpu","AlarmArn":"arn:aws:cloudwatch:eu-west-1:1:alarm:cpu","NewStateValue":"ALARM",
            "Trigger":{"Namespace":"AWS/EC2","MetricName":"CPUUtilization","Dimensions":[{"value":"i-1","name":"InstanceId"}]}});
        let Value::Object(env) = json!({"Type":"Notification","Message": alarm.to_string()}) else {
            unreachable!()
        };
        let Normalized::Alerts(a) = normalize(&env).unwrap() else {
            panic!()
        };
        assert_eq!(a[0].tags["InstanceId"], "i-1");
        assert_eq!(a[0].severity, Severity::High);
        let Value::Object(bare) = alarm else {
            unreachable!()
        };
        let Normalized::Alerts(b) = normalize(&bare).unwrap() else {
            panic!()
        };
        assert_eq!(a[0].source_alert_id, b[0].source_alert_id);
    }

    #[test]
    fn bad_message_says_what_to_fix() {
        let Value::Object(env) = json!({"Type":"Notification","Message":"{not json"}) else {
            unreachable!()
        };
        assert_eq!(normalize(&env).unwrap_err().field, "Message");
    }
}
