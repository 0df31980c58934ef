//! Metrics and request ids on `causeflow serve`, over real HTTP on loopback: `/metrics` in
//! Prometheus' format counts what the requests did, `X-Request-Id` is taken or made and
//! returned, the admission's and triage's log lines carry it, `--metrics-addr` moves `/metrics`
//! off the public address, and the Grafana dashboard in the repo only asks for metrics the
//! server exports.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use causeflow_shared::host::embedded::Embedded;
use causeflow_shared::http::RateLimit;
use causeflow_shared::telemetry;
use common::{tempdir, Server};

/// Log lines written by the process's subscriber, for the request-id checks.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn install() -> Captured {
        let c = Captured::default();
        let w = c.clone();
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || w.clone())
            .init();
        c
    }
    fn lines_with(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

/// One sample's value from Prometheus text, `None` when the series is absent.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

async fn scrape(base: &str) -> String {
    let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    r.text().await.unwrap()
}

/// Waits (bounded) until a scrape satisfies `ready`.
async fn scrape_until(base: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(base).await;
        if ready(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never got there:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn datadog(id: &str) -> Vec<u8> {
    serde_json::json!({"alert_id": id, "title": format!("disk full {id}"), "alert_type": "error"})
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_traced_and_identified() {
    let logs = Captured::install();
    // A slow refill (one request per 100 s) and a burst of 2: the third request in a row is
    // refused.
    let s = Server::start_with(|c| {
        c.rate_limit = RateLimit {
            per_sec: 0.01,
            burst: 2.0,
        }
    })
    .await;

    // A caller's id is kept and returned.
    let created = s
        .post(
            "datadog",
            &datadog("m-1"),
            false,
            &[("x-request-id", "edge-7f3a")],
        )
        .await;
    created.expect(202);
    assert_eq!(created.header("x-request-id"), "edge-7f3a");
    // Without one (or with one that is not a sane token), the server makes a UUID.
    let dup = s
        .post(
            "datadog",
            &datadog("m-1"),
            false,
            &[("x-request-id", "a b\"c")],
        )
        .await;
    dup.expect(409);
    let made = dup.header("x-request-id").to_owned();
    assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");
    let limited = s.post("datadog", &datadog("m-2"), false, &[]).await;
    limited.expect(429);
    let unauthorised = s
        .post_exact("datadog", &datadog("m-3"), &[("x-api-key", "cf_wrong")])
        .await;
    unauthorised.expect(401);
    assert!(!unauthorised.header("x-request-id").is_empty());
    let health = reqwest::get(format!("{}/healthz", s.base)).await.unwrap();
    assert!(health.headers().contains_key("x-request-id"));

    let incident = created.incident_id();
    s.wait_incident(&incident, |_| true).await;
    // The queue gauges are read at most once a second: wait until a reading shows it empty.
    let text = scrape_until(&s.base, |t| {
        sample(t, "causeflow_triaged_total{result=\"ok\"}").unwrap_or(0.0) >= 1.0
            && sample(t, "causeflow_queue_depth") == Some(0.0)
    })
    .await;

    let webhook = |status: &str, outcome: &str| {
        sample(
            &text,
            &format!(
                "causeflow_webhook_requests_total{{provider=\"datadog\",status=\"{status}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(webhook("202", "created"), Some(1.0), "{text}");
    assert_eq!(webhook("409", "duplicate"), Some(1.0), "{text}");
    assert_eq!(webhook("429", "rate_limited"), Some(1.0), "{text}");
    assert_eq!(webhook("401", "invalid_api_key"), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "causeflow_alerts_total{provider=\"datadog\",outcome=\"created\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "causeflow_alerts_total{provider=\"datadog\",outcome=\"duplicate\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "causeflow_rate_limited_total{provider=\"datadog\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "causeflow_admission_duration_seconds_count{provider=\"datadog\"}"
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &text,
            "causeflow_http_requests_total{route=\"/healthz\",status=\"200\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "causeflow_triage_latency_seconds_count"),
        Some(1.0)
    );
    assert!(sample(&text, "causeflow_tasks_total{kind=\"dispatch\"}").unwrap() >= 1.0);
    assert!(sample(&text, "causeflow_sqlite_commits_total").unwrap() >= 2.0);
    assert!(sample(&text, "causeflow_sqlite_commit_writes_count").unwrap() >= 2.0);
    assert_eq!(sample(&text, "causeflow_queue_depth"), Some(0.0));
    assert_eq!(sample(&text, "causeflow_dead_letters"), Some(0.0));
    assert_eq!(
        sample(&text, "causeflow_dispatch_failures_total"),
        Some(0.0)
    );
    // Nothing a stranger controls becomes a label: not the tenant, not the alert.
    assert!(!text.contains("acme") && !text.contains("m-1"), "{text}");

    // The admission's line and triage's line for that alert both carry the caller's id.
    let traced = logs.lines_with("edge-7f3a");
    assert!(
        traced.iter().any(|l| l.contains("webhook accepted")
            && l.contains("tenant=acme")
            && l.contains("provider=datadog")),
        "the request's line names its tenant and provider: {traced:#?}"
    );
    assert!(traced.iter().any(|l| l.contains("triaged")), "{traced:#?}");
    assert!(
        logs.lines_with(&made)
            .iter()
            .any(|l| l.contains("webhook accepted")),
        "the made-up id is in the duplicate's log line"
    );

    // The dashboard asks only for metrics this server exports.
    dashboard_references_only_exported_metrics(&text);
    s.shutdown().await;
}

/// Every metric a panel of docs/grafana/causeflow.json queries is one the server exports, seen
/// in a real scrape (histograms as their `_bucket`, `_sum` and `_count` series).
fn dashboard_references_only_exported_metrics(scraped: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana/causeflow.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 15, "the dashboard has its panels");
    let exported: BTreeSet<&str> = scraped
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut referenced = BTreeSet::new();
    for e in &exprs {
        for name in metric_names(e) {
            referenced.insert(name);
        }
    }
    for name in &referenced {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| telemetry::ALL.contains(b))
            .unwrap_or(name);
        assert!(
            telemetry::ALL.contains(&base),
            "the dashboard queries {name}, which telemetry.rs does not declare"
        );
        assert!(
            exported.contains(name.as_str()),
            "the dashboard queries {name}, which the server did not export: {exported:?}"
        );
    }
    // And the dashboard covers what an on-call engineer looks at first.
    for must in [
        telemetry::WEBHOOK_REQUESTS,
        telemetry::QUEUE_OLDEST_AGE,
        telemetry::DEAD_LETTERS,
        telemetry::DISPATCH_FAILURES,
    ] {
        assert!(
            referenced.iter().any(|r| r.starts_with(must)),
            "no panel shows {must}"
        );
    }
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `causeflow_*` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("causeflow_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_live_on_their_own_address() {
    // The listener alone moves /metrics off the public address (no config field to keep in step).
    let config =
        causeflow_shared::host::embedded::EmbeddedConfig::new(tempdir().join("causeflow.db"));
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_base = format!("http://{}", metrics.local_addr().unwrap());
    let app = Embedded::open(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = app.clone();
    let task = tokio::spawn(async move {
        runner
            .run_with(listener, Some(metrics), async move {
                let _ = stopped.await;
            })
            .await
    });
    let public = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(public.status(), 404, "not on the public address");
    let text = scrape(&metrics_base).await;
    assert!(text.contains("causeflow_queue_depth"), "{text}");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// docs/operations.md's metrics table names exactly the metrics telemetry.rs declares: a metric
/// added, renamed or dropped in one place and not the other fails here.
#[test]
fn the_operations_table_lists_exactly_the_declared_metrics() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let documented: BTreeSet<String> = doc
        .lines()
        .filter(|l| l.starts_with("| `causeflow_"))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| {
            cell.split('`')
                .filter(|s| s.starts_with("causeflow_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let declared: BTreeSet<String> = telemetry::ALL.iter().map(|s| s.to_string()).collect();
    assert_eq!(documented, declared);
}
