//! The AWS test harness: one copy of the stack's resources per test, created in the emulator
//! from `template.yaml`'s own definitions, and request helpers over the ingest Lambda's router.
//! Used by `tests/aws.rs` (built with `--features aws`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::types::QueueAttributeName;
use axum::body::Body;
use causeflow_shared::auth::{dev_key, sign, DEV_API_KEY, DEV_WEBHOOK_SECRET};
use causeflow_shared::aws::devstack;
use causeflow_shared::aws::{IngestConfig, TriageConfig};
use causeflow_shared::dedup::DedupConfig;
use causeflow_shared::host::lambda::{ingest_state, triage};
use causeflow_shared::http::router;
use causeflow_shared::ports::KeyAdmin;
use causeflow_shared::triage::Triage;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The emulator must be there: the suite fails, never skips, without it.
pub fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| {
        panic!("AWS_ENDPOINT_URL is not set: run the suite with scripts/test, which starts the AWS emulator")
    })
}

/// One copy of the stack's resources, with physical names unique to this test.
pub struct Stack {
    pub sdk: aws_config::SdkConfig,
    pub ddb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub sns: aws_sdk_sns::Client,
    /// Logical id -> what `Ref` gives (table name, queue URL, topic ARN).
    pub refs: HashMap<String, String>,
    pub template: Value,
}

pub fn template() -> Value {
    devstack::read_template(&Path::new(ROOT).join("template.yaml")).unwrap()
}

impl Stack {
    /// The template's tables, queues and topic, with names unique to this test, created by the
    /// same code as `causeflow local-stack`.
    pub async fn create() -> Stack {
        let _ = endpoint();
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let template = template();
        for (id, r) in template["Resources"].as_object().unwrap() {
            if r["Type"] == "AWS::DynamoDB::Table" {
                let props = &r["Properties"];
                assert_eq!(props["BillingMode"], "PAY_PER_REQUEST", "{id} is on-demand");
                assert_eq!(
                    props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"], true,
                    "{id} has PITR"
                );
            }
        }
        let refs = devstack::create_resources(&sdk, &template, &uuid_suffix())
            .await
            .unwrap();
        Stack {
            ddb: aws_sdk_dynamodb::Client::new(&sdk),
            sqs: aws_sdk_sqs::Client::new(&sdk),
            sns: aws_sdk_sns::Client::new(&sdk),
            sdk,
            refs,
            template,
        }
    }

    /// A function's environment as the template sets it, with `Ref`s resolved to this stack.
    pub fn env(&self, function: &str) -> BTreeMap<String, String> {
        devstack::function_env(&self.template, &self.refs, function).unwrap()
    }

    pub fn ingest_config(&self) -> IngestConfig {
        let env = self.env("IngestFunction");
        IngestConfig {
            keys_table: env["KEYS_TABLE"].clone(),
            tenants_table: env["TENANTS_TABLE"].clone(),
            dedup_table: env["DEDUP_TABLE"].clone(),
            incidents_table: env["INCIDENTS_TABLE"].clone(),
            alert_queue_url: env["ALERT_QUEUE_URL"].clone(),
            subscriptions_table: env["SUBSCRIPTIONS_TABLE"].clone(),
            rate_limit_per_sec: 0.0,
            dedup: DedupConfig::default(),
            max_alerts: causeflow_shared::http::DEFAULT_MAX_ALERTS,
        }
    }

    pub fn triage_config(&self) -> TriageConfig {
        let env = self.env("TriageFunction");
        TriageConfig {
            tenants_table: env["TENANTS_TABLE"].clone(),
            incidents_table: env["INCIDENTS_TABLE"].clone(),
            dispatch_table: env["DISPATCH_TABLE"].clone(),
            agent_topic_arn: env["AGENT_TOPIC_ARN"].clone(),
            dedup_table: env["DEDUP_TABLE"].clone(),
            max_receives: env["MAX_RECEIVE_COUNT"].parse().unwrap(),
        }
    }

    /// The stack's keys and tenants tables.
    pub fn directory(&self) -> causeflow_shared::aws::DynamoDirectory {
        let config = self.ingest_config();
        causeflow_shared::aws::DynamoDirectory::new(
            self.ddb.clone(),
            &config.keys_table,
            &config.tenants_table,
        )
    }

    /// Stores the development key the `events/` fixtures are signed with; returns the directory.
    pub async fn store_dev_key(&self) -> causeflow_shared::aws::DynamoDirectory {
        let dir = self.directory();
        dir.store_key("demo", "development", &dev_key())
            .await
            .unwrap();
        dir
    }

    /// Runs `causeflow ARGS --aws` against this stack (every name it may need passed) and returns
    /// its JSON output, failing the test when the command fails.
    pub fn cli(&self, args: &[&str]) -> Value {
        let ingest = self.ingest_config();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_causeflow"))
            .args(args)
            .arg("--aws")
            .args(["--keys-table", &ingest.keys_table])
            .args(["--tenants-table", &ingest.tenants_table])
            .args(["--subscriptions-table", &ingest.subscriptions_table])
            .args(["--incidents-table", &ingest.incidents_table])
            .args(["--dedup-table", &ingest.dedup_table])
            .args(["--queue-url", &ingest.alert_queue_url])
            .args(["--dlq-url", &self.refs["AlertDeadLetterQueue"]])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub async fn ingest(&self) -> axum::Router {
        self.store_dev_key().await;
        router(ingest_state(&self.sdk, &self.ingest_config()))
    }

    pub fn triage(&self) -> Triage {
        triage(&self.sdk, &self.triage_config())
    }

    /// One SQS queue per agent, subscribed to the topic with a filter policy on `agent`.
    pub async fn agent_queues(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for agent in [
            "logs",
            "metrics",
            "traces",
            "deploys",
            "infrastructure",
            "errors",
        ] {
            let url = self
                .sqs
                .create_queue()
                .queue_name(format!("agent-{agent}-{}", uuid_suffix()))
                .send()
                .await
                .unwrap()
                .queue_url
                .unwrap();
            let arn = queue_arn(&self.sqs, &url).await;
            self.sns
                .subscribe()
                .topic_arn(&self.refs["AgentDispatchTopic"])
                .protocol("sqs")
                .endpoint(arn)
                .attributes("FilterPolicy", json!({"agent": [agent]}).to_string())
                .attributes("RawMessageDelivery", "true")
                .send()
                .await
                .unwrap();
            out.insert(agent.to_owned(), url);
        }
        out
    }

    /// Up to 10 messages from a queue (none when it is empty).
    pub async fn receive(&self, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
        self.sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default()
    }

    /// Drains a queue, returning the bodies.
    pub async fn drain(&self, url: &str) -> Vec<String> {
        let mut bodies = Vec::new();
        loop {
            let msgs = self.receive(url).await;
            if msgs.is_empty() {
                return bodies;
            }
            for m in msgs {
                bodies.push(m.body.clone().unwrap_or_default());
                self.sqs
                    .delete_message()
                    .queue_url(url)
                    .receipt_handle(m.receipt_handle.unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }

    /// Receives everything on the alert queue and runs it through the triage Lambda's handler.
    pub async fn run_triage(&self, triage: &Triage) -> Vec<String> {
        let url = &self.refs["AlertQueue"];
        let mut failed = Vec::new();
        loop {
            let msgs = self.receive(url).await;
            if msgs.is_empty() {
                return failed;
            }
            let event = sqs_event(
                msgs.iter()
                    .map(|m| (m.message_id.clone().unwrap(), m.body.clone().unwrap())),
            );
            let resp = ::triage::handle(event, triage).await;
            let bad: Vec<String> = resp
                .batch_item_failures
                .iter()
                .map(|f| f.item_identifier.clone())
                .collect();
            for m in msgs {
                if !bad.contains(m.message_id.as_ref().unwrap()) {
                    self.sqs
                        .delete_message()
                        .queue_url(url)
                        .receipt_handle(m.receipt_handle.unwrap())
                        .send()
                        .await
                        .unwrap();
                }
            }
            failed.extend(bad);
            if !failed.is_empty() {
                return failed;
            }
        }
    }

    /// Dedup records (the keys' last-use and duplicate-count items that share the table, whose
    /// keys start with `#`, are not counted).
    pub async fn dedup_items(&self) -> i32 {
        self.ddb
            .scan()
            .table_name(&self.refs["DedupTable"])
            .filter_expression("NOT begins_with(pk, :use)")
            .expression_attribute_values(
                ":use",
                aws_sdk_dynamodb::types::AttributeValue::S("#".into()),
            )
            .send()
            .await
            .unwrap()
            .count
    }
}

pub fn uuid_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        chrono::Utc::now().timestamp_micros() % 1_000_000_000
    )
}

pub async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone()
}

pub fn sqs_event(records: impl Iterator<Item = (String, String)>) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = records
        .map(|(id, body)| {
            let mut m = SqsMessage::default();
            m.message_id = Some(id);
            m.body = Some(body);
            m
        })
        .collect();
    event
}

/// A response's status and JSON body.
pub async fn call(app: &axum::Router, req: http::Request<lambda_http::Body>) -> (u16, Value) {
    let (parts, body) = req.into_parts();
    let bytes = body.to_vec();
    let req = http::Request::from_parts(parts, Body::from(bytes));
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// An `events/` fixture, parsed exactly as the Lambda runtime's adapter parses it.
pub async fn event(app: &axum::Router, file: &str) -> (u16, Value) {
    let text = std::fs::read_to_string(Path::new(ROOT).join("events").join(file)).unwrap();
    call(app, lambda_http::request::from_str(&text).unwrap()).await
}

/// A signed generic webhook as an API Gateway request.
pub async fn generic(app: &axum::Router, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let req = http::Request::builder()
        .method("POST")
        .uri("/v1/webhooks/demo/generic")
        .header("content-type", "application/json")
        .header("x-api-key", DEV_API_KEY)
        .header(
            "x-webhook-signature",
            sign(DEV_WEBHOOK_SECRET, &[body.as_bytes()]),
        )
        .body(lambda_http::Body::from(body))
        .unwrap();
    call(app, req).await
}
