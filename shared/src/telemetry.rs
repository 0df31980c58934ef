//! Metrics, the same on both hosts: code records through the `metrics` facade, and the host
//! decides where they go. `causeflow serve` exposes them in Prometheus' text format on
//! `/metrics` ([`prometheus`]); the Lambda functions print them as CloudWatch Embedded Metric
//! Format lines in their logs after each invocation ([`emf`]), which costs no API call.
//!
//! Every name and label is declared here, so the Grafana dashboard, the alarms in
//! `template.yaml` and docs/operations.md#metrics have one list to agree with (a test checks the
//! dashboard against what the server exports). Labels are bounded sets (provider, status,
//! outcome, route template), never tenant ids or alert ids: on CloudWatch every label value
//! combination is a billed custom metric.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// HTTP requests by route template and status, every route.
pub const HTTP_REQUESTS: &str = "causeflow_http_requests_total";
/// Webhook requests by provider, status and outcome (`created`, `duplicate`, `rate_limited`, …).
pub const WEBHOOK_REQUESTS: &str = "causeflow_webhook_requests_total";
/// Alerts admitted, by provider and outcome (a request may carry many).
pub const ALERTS: &str = "causeflow_alerts_total";
/// Time from a webhook request's arrival to its answer, by provider.
pub const ADMISSION_SECONDS: &str = "causeflow_admission_duration_seconds";
/// Requests refused with 429, by provider.
pub const RATE_LIMITED: &str = "causeflow_rate_limited_total";
/// Alerts queued and not yet triaged.
pub const QUEUE_DEPTH: &str = "causeflow_queue_depth";
/// Age of the oldest queued alert (0 when the queue is empty).
pub const QUEUE_OLDEST_AGE: &str = "causeflow_queue_oldest_age_seconds";
/// Messages in the dead-letter queue.
pub const DEAD_LETTERS: &str = "causeflow_dead_letters";
/// Messages moved to the dead-letter queue.
pub const DEAD_LETTERED: &str = "causeflow_dead_lettered_total";
/// Time from an alert's admission (its `receivedAt`) to its incident being recorded.
pub const TRIAGE_LATENCY: &str = "causeflow_triage_latency_seconds";
/// Queue messages triaged, by result (`ok`, `failed`).
pub const TRIAGED: &str = "causeflow_triaged_total";
/// Agent tasks recorded by triage, by kind (`dispatch`, `cancel`).
pub const TASKS: &str = "causeflow_tasks_total";
/// Attempts to hand a task to agents: an SNS publish on AWS, a POST to `--agent-webhook` on
/// `serve`.
pub const DISPATCH_ATTEMPTS: &str = "causeflow_dispatch_attempts_total";
/// Those attempts that failed (they are retried).
pub const DISPATCH_FAILURES: &str = "causeflow_dispatch_failures_total";
/// SQLite group commits (embedded host).
pub const SQLITE_COMMITS: &str = "causeflow_sqlite_commits_total";
/// Group commits that failed (every write in them was answered with an error).
pub const SQLITE_COMMIT_FAILURES: &str = "causeflow_sqlite_commit_failures_total";
/// Writes carried by each group commit.
pub const SQLITE_COMMIT_WRITES: &str = "causeflow_sqlite_commit_writes";
/// Time each group commit took, fsync included.
pub const SQLITE_COMMIT_SECONDS: &str = "causeflow_sqlite_commit_duration_seconds";

/// Every metric this crate exports, for tests and the dashboard check.
pub const ALL: &[&str] = &[
    HTTP_REQUESTS,
    WEBHOOK_REQUESTS,
    ALERTS,
    ADMISSION_SECONDS,
    RATE_LIMITED,
    QUEUE_DEPTH,
    QUEUE_OLDEST_AGE,
    DEAD_LETTERS,
    DEAD_LETTERED,
    TRIAGE_LATENCY,
    TRIAGED,
    TASKS,
    DISPATCH_ATTEMPTS,
    DISPATCH_FAILURES,
    SQLITE_COMMITS,
    SQLITE_COMMIT_FAILURES,
    SQLITE_COMMIT_WRITES,
    SQLITE_COMMIT_SECONDS,
];

/// Latency buckets (seconds), from half a millisecond to a minute.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Writes-per-commit buckets.
pub const WRITES_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Registers help texts and units with whichever recorder is installed.
pub fn describe() {
    use metrics::Unit;
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route template and status.");
    describe_counter!(
        WEBHOOK_REQUESTS,
        "Webhook requests by provider, status and outcome."
    );
    describe_counter!(ALERTS, "Alerts admitted, by provider and outcome.");
    describe_histogram!(
        ADMISSION_SECONDS,
        Unit::Seconds,
        "Time from a webhook request's arrival to its answer."
    );
    describe_counter!(RATE_LIMITED, "Webhook requests refused with 429.");
    describe_gauge!(QUEUE_DEPTH, "Alerts queued and not yet triaged.");
    describe_gauge!(
        QUEUE_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest queued alert."
    );
    describe_gauge!(DEAD_LETTERS, "Messages in the dead-letter queue.");
    describe_counter!(DEAD_LETTERED, "Messages moved to the dead-letter queue.");
    describe_histogram!(
        TRIAGE_LATENCY,
        Unit::Seconds,
        "Time from an alert's admission to its incident being recorded."
    );
    describe_counter!(TRIAGED, "Queue messages triaged, by result.");
    describe_counter!(TASKS, "Agent tasks recorded, by kind.");
    describe_counter!(DISPATCH_ATTEMPTS, "Attempts to hand a task to agents.");
    describe_counter!(
        DISPATCH_FAILURES,
        "Failed attempts to hand a task to agents."
    );
    describe_counter!(SQLITE_COMMITS, "SQLite group commits.");
    describe_counter!(SQLITE_COMMIT_FAILURES, "SQLite group commits that failed.");
    describe_histogram!(SQLITE_COMMIT_WRITES, "Writes carried by each group commit.");
    describe_histogram!(
        SQLITE_COMMIT_SECONDS,
        Unit::Seconds,
        "Time each group commit took, fsync included."
    );
}

/// One webhook request's answer.
pub fn webhook_answered(
    provider: &'static str,
    status: u16,
    outcome: &'static str,
    took: Duration,
) {
    counter!(WEBHOOK_REQUESTS, "provider" => provider, "status" => status_label(status), "outcome" => outcome)
        .increment(1);
    histogram!(ADMISSION_SECONDS, "provider" => provider).record(took.as_secs_f64());
    if status == 429 {
        counter!(RATE_LIMITED, "provider" => provider).increment(1);
    }
}

/// One HTTP request's answer.
pub fn http_answered(route: &str, status: u16) {
    counter!(HTTP_REQUESTS, "route" => route.to_owned(), "status" => status_label(status))
        .increment(1);
}

/// `n` alerts of one provider admitted with `outcome`.
pub fn alerts(provider: &'static str, outcome: &'static str, n: usize) {
    if n > 0 {
        counter!(ALERTS, "provider" => provider, "outcome" => outcome).increment(n as u64);
    }
}

/// An incident recorded `latency` after its alert was admitted.
pub fn triaged(latency: Option<Duration>) {
    counter!(TRIAGED, "result" => "ok").increment(1);
    if let Some(l) = latency {
        histogram!(TRIAGE_LATENCY).record(l.as_secs_f64());
    }
}

/// A queue message whose triage failed (it is redelivered, or dead-lettered at its last
/// receive).
pub fn triage_failed() {
    counter!(TRIAGED, "result" => "failed").increment(1);
}

/// Tasks recorded by triage.
pub fn tasks(kind: &'static str, n: usize) {
    if n > 0 {
        counter!(TASKS, "kind" => kind).increment(n as u64);
    }
}

/// One attempt to hand tasks to agents.
pub fn dispatch_attempt(ok: bool) {
    counter!(DISPATCH_ATTEMPTS).increment(1);
    if !ok {
        counter!(DISPATCH_FAILURES).increment(1);
    }
}

/// Messages moved to the dead-letter queue.
pub fn dead_lettered(n: usize) {
    if n > 0 {
        counter!(DEAD_LETTERED).increment(n as u64);
    }
}

/// The queue as it stands.
pub fn queue(depth: u64, oldest_age: Duration, dead_letters: u64) {
    gauge!(QUEUE_DEPTH).set(depth as f64);
    gauge!(QUEUE_OLDEST_AGE).set(oldest_age.as_secs_f64());
    gauge!(DEAD_LETTERS).set(dead_letters as f64);
}

/// One SQLite group commit.
pub fn commit(writes: usize, took: Duration, ok: bool) {
    if ok {
        counter!(SQLITE_COMMITS).increment(1);
        histogram!(SQLITE_COMMIT_WRITES).record(writes as f64);
        histogram!(SQLITE_COMMIT_SECONDS).record(took.as_secs_f64());
    } else {
        counter!(SQLITE_COMMIT_FAILURES).increment(1);
    }
}

/// Status codes as labels without allocating.
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        303 => "303",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// The Prometheus exposition of `causeflow serve`.
#[cfg(feature = "embedded")]
pub mod prometheus {
    use std::sync::OnceLock;

    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

    use super::*;

    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

    /// Installs the Prometheus recorder as the process's recorder (once; later calls return the
    /// same handle, so several servers in one test process share it).
    pub fn install() -> PrometheusHandle {
        HANDLE
            .get_or_init(|| {
                let recorder = PrometheusBuilder::new()
                    .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                    .and_then(|b| {
                        b.set_buckets_for_metric(
                            Matcher::Full(SQLITE_COMMIT_WRITES.into()),
                            WRITES_BUCKETS,
                        )
                    })
                    .expect("bucket lists are not empty")
                    .build_recorder();
                let handle = recorder.handle();
                // Another recorder already installed (an embedding program's own) keeps
                // recording; `/metrics` then shows only what this one saw.
                let _ = metrics::set_global_recorder(recorder);
                describe();
                // Unlabelled counters start at 0, so a rate() or an alert on them has a series
                // before the first event.
                for name in [
                    DEAD_LETTERED,
                    DISPATCH_ATTEMPTS,
                    DISPATCH_FAILURES,
                    SQLITE_COMMITS,
                    SQLITE_COMMIT_FAILURES,
                ] {
                    metrics::counter!(name).absolute(0);
                }
                handle
            })
            .clone()
    }
}

/// CloudWatch Embedded Metric Format for the Lambda functions.
#[cfg(feature = "emf")]
pub mod emf {
    use metrics_cloudwatch_embedded::{Builder, Collector};

    /// The namespace the alarms in `template.yaml` read.
    pub const NAMESPACE: &str = "CauseFlow";

    /// Installs the EMF recorder with a `Function` dimension (`ingest`, `triage`, `console`).
    pub fn install(function: &'static str) -> Result<&'static Collector, String> {
        let collector = Builder::new()
            .cloudwatch_namespace(NAMESPACE)
            .with_dimension("Function", function)
            .init()
            .map_err(|e| e.to_string())?;
        super::describe();
        Ok(collector)
    }

    /// Writes what was recorded since the last flush as EMF lines (one per label set) to
    /// stdout, where the Lambda log agent picks them up. Called after each invocation.
    pub fn flush(collector: &Collector) {
        flush_to(collector, std::io::stdout().lock());
    }

    /// Flushes after every answer of `router`, to stdout.
    pub fn layer(router: axum::Router, collector: &'static Collector) -> axum::Router {
        layer_to(router, collector, || {
            Box::new(std::io::stdout()) as Box<dyn std::io::Write + Send>
        })
    }

    /// Like [`layer`], writing each flush to a writer `make` gives (tests read them back).
    pub fn layer_to(
        router: axum::Router,
        collector: &'static Collector,
        make: impl Fn() -> Box<dyn std::io::Write + Send> + Clone + Send + Sync + 'static,
    ) -> axum::Router {
        router.layer(axum::middleware::map_response(
            move |resp: axum::response::Response| {
                let make = make.clone();
                async move {
                    flush_to(collector, make());
                    resp
                }
            },
        ))
    }

    /// Like [`flush`] into any writer (tests read the lines back).
    pub fn flush_to(collector: &Collector, writer: impl std::io::Write) {
        if let Err(e) = collector.flush(writer) {
            tracing::warn!(error = %e, "writing metrics failed");
        }
    }
}
