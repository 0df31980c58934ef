//! The stack's resources, created in an AWS emulator on loopback straight from `template.yaml`'s
//! own definitions (tables with their keys, indexes and TTL; queues with their redrive policy;
//! topics), and the functions' environment resolved against them. `scripts/local-stack` and the
//! AWS tests both use this, so neither keeps a second copy of the template.
//!
//! Only for an emulator: [`require_loopback`] refuses any other endpoint, so these resources and
//! the public development key never land in a real account.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{json, Value};

/// Why the stack could not be created.
#[derive(Debug, thiserror::Error)]
pub enum DevStackError {
    #[error("{0}")]
    Template(String),
    #[error("{0}")]
    NotLoopback(String),
    #[error("{what}: {message}")]
    Aws { what: String, message: String },
}

fn aws<E: std::fmt::Debug>(what: impl Into<String>) -> impl FnOnce(E) -> DevStackError {
    let what = what.into();
    move |e| DevStackError::Aws {
        message: format!("{e:?}"),
        what,
    }
}

/// Whether `url` (an `AWS_ENDPOINT_URL`) names this machine: an emulator, never AWS.
pub fn is_loopback_endpoint(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    let Some(host) = u.host_str() else {
        return false;
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The per-service endpoint variables of the clients these tools build: each overrides
/// `AWS_ENDPOINT_URL` for its service.
const SERVICE_ENDPOINTS: [&str; 3] = [
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_ENDPOINT_URL_SNS",
];

/// `AWS_ENDPOINT_URL` when every endpoint the SDK would use points at loopback; otherwise an
/// error saying why `what` refuses. The SDK lets a per-service variable override the global one,
/// and `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` drop them all (back to real AWS), so both are
/// checked too.
pub fn require_loopback(what: &str) -> Result<String, DevStackError> {
    if std::env::var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        return Err(DevStackError::NotLoopback(format!(
            "{what} is for an AWS emulator on this machine, but              AWS_IGNORE_CONFIGURED_ENDPOINT_URLS would send it to AWS"
        )));
    }
    for name in SERVICE_ENDPOINTS {
        if let Ok(url) = std::env::var(name) {
            if !is_loopback_endpoint(&url) {
                return Err(DevStackError::NotLoopback(format!(
                    "{what} is for an AWS emulator on this machine, but {name} is {url:?}"
                )));
            }
        }
    }
    match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if is_loopback_endpoint(&url) => Ok(url),
        Ok(url) => Err(DevStackError::NotLoopback(format!(
            "{what} is for an AWS emulator on this machine, but AWS_ENDPOINT_URL is {url:?}"
        ))),
        Err(_) => Err(DevStackError::NotLoopback(format!(
            "{what} is for an AWS emulator on this machine: set AWS_ENDPOINT_URL to it \
             (e.g. http://127.0.0.1:4566)"
        ))),
    }
}

/// `template.yaml` as JSON (it uses only the long forms `Ref`, `Fn::GetAtt`, ...).
pub fn read_template(path: &Path) -> Result<Value, DevStackError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DevStackError::Template(format!("{}: {e}", path.display())))?;
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text)
        .map_err(|e| DevStackError::Template(format!("{}: {e}", path.display())))?;
    serde_json::to_value(yaml).map_err(|e| DevStackError::Template(e.to_string()))
}

/// Creates every table, queue and topic of `template` with the physical name
/// `{logical id}-{suffix}`, and returns what `Ref` gives for each (table name, queue URL, topic
/// ARN). Resources that already exist are reused, so a second run finds the same stack.
pub async fn create_resources(
    sdk: &aws_config::SdkConfig,
    template: &Value,
    suffix: &str,
) -> Result<HashMap<String, String>, DevStackError> {
    let (ddb, sqs, sns) = (
        aws_sdk_dynamodb::Client::new(sdk),
        aws_sdk_sqs::Client::new(sdk),
        aws_sdk_sns::Client::new(sdk),
    );
    let resources = template["Resources"]
        .as_object()
        .ok_or_else(|| DevStackError::Template("the template has no Resources".into()))?;
    // Queues without a redrive policy first, so dead-letter targets exist.
    let mut ordered: Vec<(&String, &Value)> = resources.iter().collect();
    ordered.sort_by_key(|(_, r)| r["Properties"].get("RedrivePolicy").is_some());
    let mut refs = HashMap::new();
    let mut arns = HashMap::new();
    for (id, r) in ordered {
        let props = &r["Properties"];
        let name = format!("{id}-{suffix}");
        match r["Type"].as_str().unwrap_or_default() {
            "AWS::DynamoDB::Table" => {
                create_table(&ddb, &name, props).await?;
                refs.insert(id.clone(), name);
            }
            "AWS::SQS::Queue" => {
                let mut req = sqs.create_queue().queue_name(&name);
                for key in ["VisibilityTimeout", "MessageRetentionPeriod"] {
                    if let Some(v) = props.get(key) {
                        req = req.attributes(QueueAttributeName::from(key), v.to_string());
                    }
                }
                if let Some(rp) = props.get("RedrivePolicy") {
                    let target = rp["deadLetterTargetArn"]["Fn::GetAtt"][0]
                        .as_str()
                        .and_then(|t| arns.get(t))
                        .ok_or_else(|| {
                            DevStackError::Template(format!(
                                "{id}: the redrive target is not a queue of the template"
                            ))
                        })?;
                    let policy = json!({"deadLetterTargetArn": target, "maxReceiveCount": rp["maxReceiveCount"]});
                    req = req.attributes(QueueAttributeName::RedrivePolicy, policy.to_string());
                }
                let url = req
                    .send()
                    .await
                    .map_err(aws(format!("create queue {name}")))?
                    .queue_url
                    .unwrap_or_default();
                arns.insert(id.clone(), queue_arn(&sqs, &url).await?);
                refs.insert(id.clone(), url);
            }
            "AWS::SNS::Topic" => {
                let arn = sns
                    .create_topic()
                    .name(&name)
                    .send()
                    .await
                    .map_err(aws(format!("create topic {name}")))?
                    .topic_arn
                    .unwrap_or_default();
                refs.insert(id.clone(), arn);
            }
            _ => {}
        }
    }
    Ok(refs)
}

/// A function's `Environment.Variables` with every `Ref` resolved: to the created resource, or to
/// the parameter's default.
pub fn function_env(
    template: &Value,
    refs: &HashMap<String, String>,
    function: &str,
) -> Result<BTreeMap<String, String>, DevStackError> {
    let vars = template["Resources"][function]["Properties"]["Environment"]["Variables"]
        .as_object()
        .ok_or_else(|| {
            DevStackError::Template(format!("{function} has no Environment.Variables"))
        })?;
    let mut out = BTreeMap::new();
    for (k, v) in vars {
        let value = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => {
                let Some(r) = v.get("Ref").and_then(Value::as_str) else {
                    return Err(DevStackError::Template(format!(
                        "{function}: {k} is neither a literal nor a Ref"
                    )));
                };
                match refs.get(r) {
                    Some(value) => value.clone(),
                    None => match &template["Parameters"][r]["Default"] {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => {
                            return Err(DevStackError::Template(format!(
                                "{function}: {k} refers to {r}, which has no value here"
                            )))
                        }
                    },
                }
            }
        };
        out.insert(k.clone(), value);
    }
    Ok(out)
}

/// The ARN of the queue at `url` (what an SQS event names as its source).
pub async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<String, DevStackError> {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(aws(format!("read the ARN of {url}")))?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or_else(|| DevStackError::Aws {
            what: format!("read the ARN of {url}"),
            message: "no QueueArn attribute".into(),
        })
}

fn str_at<'a>(v: &'a Value, key: &str, table: &str) -> Result<&'a str, DevStackError> {
    v[key]
        .as_str()
        .ok_or_else(|| DevStackError::Template(format!("{table}: {key} is missing")))
}

async fn create_table(
    ddb: &aws_sdk_dynamodb::Client,
    name: &str,
    props: &Value,
) -> Result<(), DevStackError> {
    let key = |k: &Value| -> Result<KeySchemaElement, DevStackError> {
        KeySchemaElement::builder()
            .attribute_name(str_at(k, "AttributeName", name)?)
            .key_type(KeyType::from(str_at(k, "KeyType", name)?))
            .build()
            .map_err(aws(format!("{name} key schema")))
    };
    let mut req = ddb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest);
    for a in props["AttributeDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        req = req.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(str_at(a, "AttributeName", name)?)
                .attribute_type(ScalarAttributeType::from(str_at(a, "AttributeType", name)?))
                .build()
                .map_err(aws(format!("{name} attributes")))?,
        );
    }
    for k in props["KeySchema"].as_array().into_iter().flatten() {
        req = req.key_schema(key(k)?);
    }
    for g in props["GlobalSecondaryIndexes"]
        .as_array()
        .into_iter()
        .flatten()
    {
        // The template's projection, so code that reads an attribute a keys-only index does not
        // carry fails here as it would on AWS.
        let projection = g["Projection"]["ProjectionType"]
            .as_str()
            .map_or(ProjectionType::All, ProjectionType::from);
        let mut gb = GlobalSecondaryIndex::builder()
            .index_name(str_at(g, "IndexName", name)?)
            .projection(Projection::builder().projection_type(projection).build());
        for k in g["KeySchema"].as_array().into_iter().flatten() {
            gb = gb.key_schema(key(k)?);
        }
        req = req.global_secondary_indexes(gb.build().map_err(aws(format!("{name} index")))?);
    }
    match req.send().await {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|se| se.is_resource_in_use_exception()) =>
        {
            return Ok(());
        }
        Err(e) => return Err(aws(format!("create table {name}"))(e)),
    }
    if let Some(ttl) = props.get("TimeToLiveSpecification") {
        ddb.update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(str_at(ttl, "AttributeName", name)?)
                    .enabled(ttl["Enabled"].as_bool().unwrap_or(false))
                    .build()
                    .map_err(aws(format!("{name} TTL")))?,
            )
            .send()
            .await
            .map_err(aws(format!("turn on TTL for {name}")))?;
    }
    Ok(())
}

/// What one round of [`pump_once`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PumpRound {
    /// Messages received and handed to the function.
    pub received: usize,
    /// Messages the function reported in `batchItemFailures` (or all, when the invoke failed):
    /// left on the queue for redelivery after the visibility timeout.
    pub failed: usize,
}

/// One round of what Lambda's SQS event source mapping does: receive up to `batch` messages
/// (long-polling up to `wait_secs`), hand them to `invoke` as one SQS event, and delete the ones
/// the function did not report in `batchItemFailures`. A failed invoke deletes nothing, so every
/// message comes back after its visibility timeout and, after `maxReceiveCount` receives, goes
/// to the dead-letter queue, as on AWS.
pub async fn pump_once<F, Fut>(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    queue_arn: &str,
    batch: i32,
    wait_secs: i32,
    invoke: F,
) -> Result<PumpRound, DevStackError>
where
    F: FnOnce(Value) -> Fut,
    Fut: std::future::Future<Output = Result<Value, String>>,
{
    let out = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(batch.clamp(1, 10))
        .wait_time_seconds(wait_secs.clamp(0, 20))
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .send()
        .await
        .map_err(aws("receive from the alert queue"))?;
    let msgs = out.messages.unwrap_or_default();
    if msgs.is_empty() {
        return Ok(PumpRound::default());
    }
    let region = queue_arn.split(':').nth(3).unwrap_or_default();
    let records: Vec<Value> = msgs
        .iter()
        .map(|m| {
            let attributes: serde_json::Map<String, Value> = m
                .attributes
                .iter()
                .flatten()
                .map(|(k, v)| (k.as_str().to_owned(), Value::String(v.clone())))
                .collect();
            json!({
                "messageId": m.message_id,
                "receiptHandle": m.receipt_handle,
                "body": m.body,
                "md5OfBody": m.md5_of_body,
                "attributes": attributes,
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            })
        })
        .collect();
    let failed: Vec<String> = match invoke(json!({ "Records": records })).await {
        Ok(answer) => answer["batchItemFailures"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "the triage function failed; the batch will be redelivered");
            msgs.iter().filter_map(|m| m.message_id.clone()).collect()
        }
    };
    let done: Vec<_> = msgs
        .iter()
        .filter(|m| m.message_id.as_ref().is_some_and(|id| !failed.contains(id)))
        .enumerate()
        .filter_map(|(i, m)| {
            aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .set_receipt_handle(m.receipt_handle.clone())
                .build()
                .ok()
        })
        .collect();
    let mut deleted = done.len();
    if !done.is_empty() {
        let out = sqs
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(done))
            .send()
            .await
            .map_err(aws("delete triaged messages"))?;
        // Not deleted: back after the visibility timeout, and triage is idempotent.
        deleted -= out.failed.len();
    }
    Ok(PumpRound {
        received: msgs.len(),
        failed: msgs.len() - deleted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_endpoints_count() {
        for ok in [
            "http://127.0.0.1:4566",
            "http://localhost:4566/",
            "http://[::1]:4566",
            "http://127.8.0.1",
        ] {
            assert!(is_loopback_endpoint(ok), "{ok}");
        }
        for no in [
            "https://dynamodb.eu-west-1.amazonaws.com",
            "http://10.0.0.5:4566",
            "http://localhost.evil.example:4566",
            "not a url",
        ] {
            assert!(!is_loopback_endpoint(no), "{no}");
        }
    }

    #[test]
    fn function_env_resolves_refs_and_parameter_defaults() {
        let template = json!({
            "Parameters": {"Rate": {"Type": "Number", "Default": 50}},
            "Resources": {"F": {"Properties": {"Environment": {"Variables": {
                "TABLE": {"Ref": "T"}, "RATE": {"Ref": "Rate"}, "MODE": "x", "N": 5
            }}}}}
        });
        let refs = HashMap::from([("T".to_owned(), "T-local".to_owned())]);
        let env = function_env(&template, &refs, "F").unwrap();
        assert_eq!(env["TABLE"], "T-local");
        assert_eq!(env["RATE"], "50");
        assert_eq!(env["MODE"], "x");
        assert_eq!(env["N"], "5");
        assert!(function_env(&template, &HashMap::new(), "G").is_err());
    }

    #[test]
    fn every_function_of_the_template_gets_its_environment() {
        // `causeflow local-stack` and the AWS tests run each function with this environment: a
        // variable set with an intrinsic other than Ref would stop them.
        let template =
            read_template(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml")).unwrap();
        let resources = template["Resources"].as_object().unwrap();
        let refs: HashMap<String, String> = resources
            .keys()
            .map(|id| (id.clone(), format!("{id}-local")))
            .collect();
        let functions: Vec<&String> = resources
            .iter()
            .filter(|(_, r)| r["Type"] == "AWS::Serverless::Function")
            .map(|(id, _)| id)
            .collect();
        assert!(functions.len() >= 3, "{functions:?}");
        for f in functions {
            let env = function_env(&template, &refs, f).unwrap();
            assert!(!env.is_empty(), "{f}");
        }
        let console = function_env(&template, &refs, "ConsoleFunction").unwrap();
        assert_eq!(console["SESSIONS_TABLE"], "ConsoleSessionsTable-local");
        assert_eq!(
            console["PUBLIC_URL"], "",
            "the parameter's default: no public URL"
        );
    }
}
