//! The Lambda functions' metrics: the same recording code as `serve`, printed as CloudWatch
//! Embedded Metric Format lines after each request. Checks the lines are EMF CloudWatch will
//! extract (namespace, dimensions, one value per declared metric), and that the alarm
//! `template.yaml` sets on dispatch failures names a metric and dimensions the triage function
//! really emits.

mod common;

use std::path::Path;

use causeflow_shared::telemetry::{self, emf};
use serde_json::Value;

fn template() -> serde_yaml::Value {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("template.yaml"))
        .unwrap();
    // CloudFormation's short-form tags are not used in template.yaml; plain YAML reads it.
    serde_yaml::from_str(&text).unwrap()
}

/// The EMF documents in `out`, each checked against the format's rules.
fn documents(out: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(out).unwrap();
    let docs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect();
    for d in &docs {
        let aws = &d["_aws"];
        assert!(aws["Timestamp"].as_u64().unwrap() > 1_700_000_000_000);
        let directive = &aws["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], emf::NAMESPACE);
        for dims in directive["Dimensions"].as_array().unwrap() {
            let dims = dims.as_array().unwrap();
            assert!(!dims.is_empty() && dims.len() <= 30);
            for name in dims {
                assert!(
                    d[name.as_str().unwrap()].is_string(),
                    "dimension {name} has a value in {d}"
                );
            }
        }
        for m in directive["Metrics"].as_array().unwrap() {
            let name = m["Name"].as_str().unwrap();
            assert!(
                telemetry::ALL.contains(&name),
                "{name} is declared in telemetry.rs"
            );
            assert!(
                d[name].is_number() || d[name].is_array(),
                "{name} has a value in {d}"
            );
        }
    }
    docs
}

fn metric<'a>(docs: &'a [Value], name: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| {
            d["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["Name"] == name)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_metrics_are_emf_and_feed_the_alarms() {
    let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let collector = emf::install("ingest").unwrap();
    // The ingest router over the embedded stores (the recording code is the host's, not the
    // stores'); its answers flush EMF lines into `out`, as the Lambda's go to stdout.
    let server = common::Server::start().await;
    let sink = out.clone();
    let app = emf::layer_to(
        causeflow_shared::http::router(server.app.state.clone()),
        collector,
        move || Box::new(SinkWriter(sink.clone())) as Box<dyn std::io::Write + Send>,
    );
    let body =
        serde_json::json!({"alert_id": "emf-1", "title": "cpu", "alert_type": "error"}).to_string();
    let req = http::Request::post(format!("/v1/webhooks/{}/datadog", server.tenant))
        .header("content-type", "application/json")
        .header("x-api-key", &server.api_key)
        .body(axum::body::Body::from(body))
        .unwrap();
    let resp = tower::ServiceExt::oneshot(app, req).await.unwrap();
    assert_eq!(resp.status(), 202);
    assert!(resp.headers().contains_key("x-request-id"));

    let docs = documents(&out.lock().unwrap());
    eprintln!(
        "EMF for one webhook request: {} documents, {} bytes of log",
        docs.len(),
        out.lock().unwrap().len()
    );
    let requests = metric(&docs, telemetry::WEBHOOK_REQUESTS);
    assert_eq!(requests.len(), 1, "{docs:#?}");
    let d = requests[0];
    assert_eq!(d["Function"], "ingest");
    assert_eq!(d["provider"], "datadog");
    assert_eq!(d["status"], "202");
    assert_eq!(d["outcome"], "created");
    assert_eq!(d[telemetry::WEBHOOK_REQUESTS], 1);
    let latency = metric(&docs, telemetry::ADMISSION_SECONDS);
    assert_eq!(
        latency[0][telemetry::ADMISSION_SECONDS]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        latency[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"],
        "Seconds"
    );

    // A second flush carries only what happened since: counters are deltas, as EMF sums them.
    out.lock().unwrap().clear();
    telemetry::dispatch_attempt(false);
    emf::flush_to(collector, SinkWriter(out.clone()));
    let docs = documents(&out.lock().unwrap());
    assert!(metric(&docs, telemetry::WEBHOOK_REQUESTS).is_empty());
    let failures = metric(&docs, telemetry::DISPATCH_FAILURES);
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0][telemetry::DISPATCH_FAILURES], 1);

    // The dispatch-failure alarm reads exactly that metric with exactly those dimensions (the
    // triage function's recorder differs only in its Function value).
    let t = template();
    let alarm = &t["Resources"]["DispatchFailureAlarm"]["Properties"];
    assert_eq!(alarm["Namespace"].as_str(), Some(emf::NAMESPACE));
    assert_eq!(
        alarm["MetricName"].as_str(),
        Some(telemetry::DISPATCH_FAILURES)
    );
    let dims: Vec<&str> = failures[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let alarm_dims: Vec<&str> = alarm["Dimensions"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|d| d["Name"].as_str().unwrap())
        .collect();
    assert_eq!(dims, alarm_dims);
    assert_eq!(alarm["Dimensions"][0]["Value"].as_str(), Some("triage"));

    // The other alarms an on-call engineer needs are there, on the stack's own resources.
    let resources = t["Resources"].as_mapping().unwrap();
    let alarms: Vec<(&str, String)> = resources
        .iter()
        .filter(|(_, r)| r["Type"] == "AWS::CloudWatch::Alarm")
        .map(|(k, r)| {
            (
                k.as_str().unwrap(),
                serde_yaml::to_string(&r["Properties"]).unwrap(),
            )
        })
        .collect();
    let has = |metric: &str, on: &str| {
        alarms
            .iter()
            .any(|(_, p)| p.contains(&format!("MetricName: {metric}")) && p.contains(on))
    };
    assert!(has(
        "ApproximateNumberOfMessagesVisible",
        "AlertDeadLetterQueue"
    ));
    assert!(has("ApproximateAgeOfOldestMessage", "AlertQueue"));
    assert!(has("5xx", "HttpApi") && has("Count", "HttpApi"));
    assert!(has(telemetry::DISPATCH_FAILURES, "triage"));
    for (name, props) in &alarms {
        assert!(
            props.contains("AlarmTopicArn"),
            "{name} notifies the alarm topic when one is given"
        );
    }
    server.shutdown().await;
}

struct SinkWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SinkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
