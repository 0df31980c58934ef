//! Prometheus Alertmanager and PagerDuty Events v2 senders against a real server: every way they
//! can authenticate, the unsigned namespace, PagerDuty's answers and acknowledgements, and a real
//! Alertmanager process (Debian's `prometheus-alertmanager`) delivering a firing and a resolved
//! alert with the receiver block the README documents.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use causeflow_shared::model::{
    Alert, AlertStatus, IncidentStatus, Provider, QueuedAlert, Severity,
};
use causeflow_shared::ports::{IncidentQuery, IncidentStore};
use causeflow_shared::triage::TriageError;
use common::{tempdir, Resp, Server};
use serde_json::json;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/webhooks");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(name)).unwrap()
}

/// POSTs `body` to `provider` with exactly `headers` (no key or signature added).
/// A PagerDuty event with `routing_key` set to `key`.
fn pd_event(key: &str, action: &str, dedup_key: &str) -> Vec<u8> {
    let mut v = json!({"routing_key": key, "event_action": action, "dedup_key": dedup_key});
    if action == "trigger" {
        v["payload"] =
            json!({"summary": "Checkout down", "source": "checkout-1", "severity": "critical"});
    }
    v.to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_authenticates_as_its_http_config_can() {
    let s = Server::start().await;
    let body = fixture("alertmanager/group-2-firing.json");
    let bearer = format!("Bearer {}", s.api_key);
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("alertmanager:{}", s.api_key))
    );
    s.post_exact("alertmanager", &body, &[("authorization", &bearer)])
        .await
        .expect(202);
    // The same group again, each way: duplicates of the incidents the first opened, answered
    // 202 (Alertmanager counts anything else as a failed notification).
    for auth in [
        ("authorization", basic.as_str()),
        ("x-api-key", s.api_key.as_str()),
    ] {
        let r = s.post_exact("alertmanager", &body, &[auth]).await;
        r.expect(202);
        assert_eq!(r.outcomes(), ["duplicate", "duplicate"], "{}", r.text);
    }
    let r = s.post_exact("alertmanager", &body, &[]).await;
    r.expect(401);
    assert_eq!(r.code(), "missing_api_key");
    assert!(
        r.json["detail"].as_str().unwrap().contains("Bearer"),
        "{}",
        r.text
    );
    assert_eq!(
        r.header("content-type"),
        "application/problem+json",
        "{}",
        r.text
    );
    let r = s
        .post_exact(
            "alertmanager",
            &body,
            &[("authorization", "Bearer cf_not_a_key")],
        )
        .await;
    r.expect(401);
    assert_eq!(r.code(), "invalid_api_key");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_alertmanager_requests_never_touch_signed_incidents() {
    let s = Server::start().await;
    // A signing proxy in front of Alertmanager opens the incidents.
    let r = s
        .post(
            "alertmanager",
            &fixture("alertmanager/group-2-firing.json"),
            true,
            &[],
        )
        .await;
    r.expect(202);
    let signed_id = r.json["alerts"][0]["incidentId"]
        .as_str()
        .unwrap()
        .to_owned();
    // A captured or forged unsigned resolve with the same fingerprints resolves nothing of them.
    let r = s
        .post(
            "alertmanager",
            &fixture("alertmanager/group-2-resolved.json"),
            false,
            &[],
        )
        .await;
    r.expect(202);
    assert_eq!(r.outcomes(), ["ignored", "ignored"], "{}", r.text);
    let inc = s.wait_incident(&signed_id, |_| true).await;
    assert_eq!(inc.status, IncidentStatus::Open);
    // The signed resolve does.
    let r = s
        .post(
            "alertmanager",
            &fixture("alertmanager/group-2-resolved.json"),
            true,
            &[],
        )
        .await;
    assert_eq!(r.outcomes(), ["resolved", "resolved"], "{}", r.text);
    s.wait_incident(&signed_id, |i| i.status == IncidentStatus::Resolved)
        .await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_routing_key_is_the_api_key_and_answers_are_pagerdutys() {
    let s = Server::start().await;
    // routing_key alone authenticates.
    let r = s
        .post_exact("pagerduty", &pd_event(&s.api_key, "trigger", "db-1"), &[])
        .await;
    r.expect(202);
    assert_eq!(
        (
            r.json["status"].as_str(),
            r.json["message"].as_str(),
            r.json["dedup_key"].as_str(),
            r.json["outcome"].as_str()
        ),
        (
            Some("success"),
            Some("Event processed"),
            Some("db-1"),
            Some("created")
        ),
        "{}",
        r.text
    );
    let id = r.json["incidentId"].as_str().unwrap().to_owned();
    // X-API-Key wins over a routing_key that is not a key of ours (a real PagerDuty key).
    let r = s
        .post_exact(
            "pagerduty",
            &pd_event("R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY12", "acknowledge", "db-1"),
            &[("x-api-key", &s.api_key)],
        )
        .await;
    r.expect(202);
    assert_eq!(
        (r.json["outcome"].as_str(), r.json["incidentId"].as_str()),
        (Some("acknowledged"), Some(id.as_str()))
    );
    let inc = s
        .wait_incident(&id, |i| i.status == IncidentStatus::Acknowledged)
        .await;
    assert!(inc.acknowledged_at.is_some());
    // The incidents API filters on the new status.
    let r = Resp::from(
        s.client
            .get(format!(
                "{}/v1/tenants/{}/incidents?status=acknowledged",
                s.base, s.tenant
            ))
            .header("authorization", format!("Bearer {}", s.api_key))
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json["incidents"][0]["incidentId"], id.as_str());
    // And `status=open` lists only the incidents nobody acknowledged (docs/contract.md).
    let r = Resp::from(
        s.client
            .get(format!(
                "{}/v1/tenants/{}/incidents?status=open",
                s.base, s.tenant
            ))
            .header("x-api-key", &s.api_key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(200);
    assert!(
        r.json["incidents"].as_array().unwrap().is_empty(),
        "{}",
        r.text
    );

    // Wrong, missing, and unreadable keys.
    let r = s
        .post_exact("pagerduty", &pd_event("cf_wrong", "trigger", "x"), &[])
        .await;
    r.expect(401);
    assert_eq!(r.code(), "invalid_api_key");
    let r = s
        .post_exact("pagerduty", br#"{"event_action":"trigger"}"#, &[])
        .await;
    r.expect(401);
    assert_eq!(r.code(), "missing_api_key");
    assert!(r.json["detail"].as_str().unwrap().contains("routing_key"));
    let r = s.post_exact("pagerduty", b"not json", &[]).await;
    r.expect(401);
    assert_eq!(r.code(), "missing_api_key");
    // An authenticated but invalid event: 400 naming the field, as problem+json.
    let r = s.post_exact("pagerduty",
        json!({"routing_key": s.api_key, "event_action": "trigger", "payload": {"summary": "x", "source": "y", "severity": "sev1"}})
            .to_string()
            .as_bytes(),
        &[],
    )
    .await;
    r.expect(400);
    assert!(
        r.json["detail"]
            .as_str()
            .unwrap()
            .contains("payload.severity"),
        "{}",
        r.text
    );
    // An acknowledge with nothing open changes nothing and says so.
    let r = s
        .post_exact(
            "pagerduty",
            &pd_event(&s.api_key, "acknowledge", "never"),
            &[],
        )
        .await;
    r.expect(202);
    assert_eq!(r.json["outcome"], "acknowledged");
    assert!(r.json.get("incidentId").is_none(), "{}", r.text);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_pagerduty_events_never_touch_signed_incidents() {
    let s = Server::start().await;
    let trigger = pd_event(&s.api_key, "trigger", "pay-1");
    let r = s.post("pagerduty", &trigger, true, &[]).await;
    r.expect(202);
    let id = r.json["incidentId"].as_str().unwrap().to_owned();
    for action in ["acknowledge", "resolve"] {
        let r = s
            .post_exact("pagerduty", &pd_event(&s.api_key, action, "pay-1"), &[])
            .await;
        r.expect(202);
        assert!(
            r.json.get("incidentId").is_none(),
            "an unsigned {action} reached the signed incident: {}",
            r.text
        );
    }
    assert_eq!(
        s.wait_incident(&id, |_| true).await.status,
        IncidentStatus::Open
    );
    // Signed, it acknowledges; a new trigger is still a duplicate of the acknowledged incident.
    let ack = pd_event(&s.api_key, "acknowledge", "pay-1");
    let r = s.post("pagerduty", &ack, true, &[]).await;
    assert_eq!(r.json["incidentId"], id.as_str(), "{}", r.text);
    s.wait_incident(&id, |i| i.status == IncidentStatus::Acknowledged)
        .await;
    let r = s.post("pagerduty", &trigger, true, &[]).await;
    r.expect(202);
    assert_eq!(
        (r.json["outcome"].as_str(), r.json["incidentId"].as_str()),
        (Some("duplicate"), Some(id.as_str()))
    );
    s.shutdown().await;
}

/// A queued PagerDuty alert of `s`'s tenant, as triage receives it.
fn queued(s: &Server, incident_id: &str, status: AlertStatus) -> QueuedAlert {
    QueuedAlert {
        tenant_id: s.tenant.clone(),
        provider: Provider::Pagerduty,
        incident_id: incident_id.into(),
        alert: Alert {
            source_alert_id: incident_id.trim_start_matches("inc_").into(),
            status,
            title: "Checkout down".into(),
            title_truncated: false,
            message: None,
            severity: Severity::Critical,
            service: None,
            environment: None,
            tags: Default::default(),
            links: vec![],
            test: false,
            unsigned: false,
        },
        received_at: "2026-11-28T09:41:00.000Z".into(),
        request_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_triaged_before_its_firing_waits_for_it() {
    let s = Server::start().await;
    let triage = |status| {
        let msg = queued(&s, "inc_early", status);
        let t = s.app.triage.clone();
        async move { t.process(&msg).await }
    };
    let stored = || async {
        s.app
            .incidents
            .get(&s.tenant, "inc_early")
            .await
            .unwrap()
            .unwrap()
    };
    // SQS does not keep order: the acknowledgement fails (and is redelivered) until the firing
    // has been triaged.
    let early = triage(AlertStatus::Acknowledged).await;
    assert!(matches!(early, Err(TriageError::NotYetOpen)), "{early:?}");
    triage(AlertStatus::Firing).await.unwrap();
    triage(AlertStatus::Acknowledged).await.unwrap();
    assert_eq!(stored().await.status, IncidentStatus::Acknowledged);
    // A redelivered firing after the acknowledgement finishes its dispatch, once per agent (task
    // ids are stable), and leaves the incident acknowledged.
    triage(AlertStatus::Firing).await.unwrap();
    let inc = stored().await;
    assert_eq!(inc.status, IncidentStatus::Acknowledged);
    let rows = s
        .app
        .dispatcher
        .for_incident(&s.tenant, "inc_early")
        .await
        .unwrap();
    let mut agents: Vec<&str> = rows.iter().map(|r| r.agent.as_str()).collect();
    agents.sort_unstable();
    let mut want: Vec<&str> = inc.agents.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert!(!want.is_empty());
    assert_eq!(agents, want, "each agent dispatched exactly once");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_whose_incident_never_opens_is_dropped_at_its_last_receive() {
    let s = Server::start().await;
    let msg = queued(&s, "inc_never", AlertStatus::Acknowledged);
    let record = |receive_count| causeflow_shared::triage::QueueRecord {
        id: "m1".into(),
        body: serde_json::to_string(&msg).unwrap(),
        receive_count,
    };
    let max = s.app.triage.max_receives;
    assert_eq!(
        s.app.triage.handle_batch(vec![record(1)]).await,
        ["m1"],
        "retried while the firing may still come"
    );
    assert!(
        s.app
            .triage
            .handle_batch(vec![record(max)])
            .await
            .is_empty(),
        "dropped, not dead-lettered, at the last receive"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudwatch_with_a_bearer_key_takes_the_signed_path_not_snss() {
    let s = Server::start().await;
    let body = fixture("cloudwatch/metric-alarm-alarm.json");
    let sig = causeflow_shared::auth::sign(&s.secret, &[&body]);
    let r = s
        .post_exact(
            "cloudwatch",
            &body,
            &[
                ("authorization", &format!("Bearer {}", s.api_key)),
                ("x-webhook-signature", &sig),
                ("x-amz-sns-message-type", "Notification"),
            ],
        )
        .await;
    r.expect(202);
    assert_eq!(r.outcomes(), ["created"], "{}", r.text);
    s.shutdown().await;
}

/// The README's `alertmanager.yml` receiver block (between its markers).
fn readme_receiver_block() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("<!-- alertmanager.yml -->")
        .expect("the README has the alertmanager.yml block");
    let rest = &readme[start..];
    let open = rest.find("```yaml\n").unwrap() + "```yaml\n".len();
    let close = rest[open..].find("```").unwrap();
    rest[open..open + close].to_owned()
}

/// Debian's Alertmanager binaries. Missing is a failure: `scripts/test` installs them.
fn alertmanager_bin(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: install Debian's prometheus-alertmanager (scripts/test does)",
        path.display()
    );
    path
}

#[test]
fn the_readme_receiver_block_passes_amtool_check_config() {
    let dir = tempdir();
    let file = dir.join("alertmanager.yml");
    std::fs::write(&file, readme_receiver_block()).unwrap();
    let out = Command::new(alertmanager_bin("amtool"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "amtool check-config failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills the Alertmanager process when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits, bounded, until the tenant has an Alertmanager incident for which `ready` holds.
async fn wait_alertmanager_incident(
    s: &Server,
    what: &str,
    ready: impl Fn(&causeflow_shared::model::Incident) -> bool,
) -> causeflow_shared::model::Incident {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = s
            .app
            .incidents
            .list(
                &s.tenant,
                &IncidentQuery {
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        if let Some(i) = page
            .incidents
            .into_iter()
            .find(|i| i.provider == Provider::Alertmanager && ready(i))
        {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "Alertmanager did not deliver {what} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_delivers_firing_then_resolved() {
    let s = Server::start().await;
    let dir = tempdir();
    let key_file = dir.join("causeflow-api-key");
    std::fs::write(&key_file, &s.api_key).unwrap();
    // The README's block, pointed at this server, with waits short enough for a test.
    let config = readme_receiver_block()
        .replace(
            "https://causeflow.example.com/v1/webhooks/YOUR_TENANT_ID/alertmanager",
            &s.webhook_url("alertmanager"),
        )
        .replace(
            "/etc/alertmanager/causeflow-api-key",
            key_file.to_str().unwrap(),
        )
        .replace("group_wait: 30s", "group_wait: 0s")
        .replace("group_interval: 5m", "group_interval: 1s");
    assert!(config.contains(&s.webhook_url("alertmanager")), "{config}");
    let config_file = dir.join("alertmanager.yml");
    std::fs::write(&config_file, &config).unwrap();
    let port = free_port();
    let am = Killed(
        Command::new(alertmanager_bin("prometheus-alertmanager"))
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // No cluster: a single instance on loopback.
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Alertmanager"),
    );
    let api = format!("http://127.0.0.1:{port}/api/v2/alerts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while s
        .client
        .get(format!("http://127.0.0.1:{port}/-/ready"))
        .send()
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "Alertmanager did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Started a while ago, so the resolve's end time is after it.
    let now = chrono::Utc::now() - chrono::Duration::minutes(5);
    let alert = |ends: chrono::DateTime<chrono::Utc>| {
        json!([{
            "labels": {"alertname": "DiskAlmostFull", "severity": "critical", "service": "db",
                       "env": "prod", "instance": "db-1:9100"},
            "annotations": {"summary": "Disk /var on db-1 is 97% full"},
            "startsAt": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "endsAt": ends.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "generatorURL": "http://prometheus:9090/graph?g0.expr=disk"
        }])
    };
    // Alertmanager's own API, as Prometheus posts to it.
    let post = |alerts: serde_json::Value| {
        let (client, api) = (s.client.clone(), api.clone());
        async move {
            let r = client.post(&api).json(&alerts).send().await.unwrap();
            let status = r.status();
            assert!(status.is_success(), "{status}: {}", r.text().await.unwrap());
        }
    };
    post(alert(chrono::Utc::now() + chrono::Duration::hours(1))).await;
    let opened =
        wait_alertmanager_incident(&s, "the firing alert", |i| i.status == IncidentStatus::Open)
            .await;
    assert_eq!(
        (
            opened.title.as_str(),
            opened.severity,
            opened.service.as_deref(),
            opened.environment.as_deref()
        ),
        (
            "Disk /var on db-1 is 97% full",
            Severity::Critical,
            Some("db"),
            Some("prod")
        )
    );

    // The alert ends: Alertmanager sends it resolved at the group's next interval.
    post(alert(chrono::Utc::now() - chrono::Duration::seconds(1))).await;
    let resolved = wait_alertmanager_incident(&s, "the resolved alert", |i| {
        i.incident_id == opened.incident_id && i.status == IncidentStatus::Resolved
    })
    .await;
    assert!(resolved.resolved_at.is_some());
    drop(am);
    s.shutdown().await;
}
