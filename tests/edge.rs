//! The public edge as an attacker or a busy sender meets it (docs/security.md): only signed
//! bytes shape an alert, unsigned ids live apart from signed ones, forged requests spend no
//! rate, and one request carries a bounded number of alerts.

mod common;

use std::sync::OnceLock;

use causeflow_shared::http::RateLimit;
use causeflow_shared::ports::KeyAdmin;
use common::sns_signing::{notification, FakeHttps, SnsSigner};
use common::{Resp, Server};
use serde_json::{json, Map, Value};

const TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:alarms";

fn signer() -> &'static SnsSigner {
    static S: OnceLock<SnsSigner> = OnceLock::new();
    S.get_or_init(SnsSigner::new)
}

/// A server whose tenant `acme` allow-lists [`TOPIC`].
async fn sns_server(
    tweak: impl FnOnce(&mut causeflow_shared::host::embedded::EmbeddedConfig),
) -> Server {
    let s = Server::start_full(tweak, Some(FakeHttps::new(&signer().cert_pem))).await;
    s.app
        .directory
        .allow_topic("acme", TOPIC, true)
        .await
        .unwrap();
    s
}

/// A signed notification for alarm `name` in `state`, with `extra` top-level fields added
/// after signing (SNS signs only its own fields).
fn alarm(name: &str, state: &str, extra: &[(&str, Value)]) -> Map<String, Value> {
    let mut env = notification(TOPIC, state, None);
    let message = env["Message"]
        .as_str()
        .unwrap()
        .replace("api-5xx-rate", name);
    env.insert("Message".into(), Value::String(message));
    signer().sign(&mut env, "2");
    for (k, v) in extra {
        env.insert((*k).into(), v.clone());
    }
    env
}

fn alarm_arn(name: &str) -> String {
    format!("arn:aws:cloudwatch:eu-west-1:123456789012:alarm:{name}")
}

async fn deliver(s: &Server, env: &Map<String, Value>) -> Resp {
    Resp::from(
        s.client
            .post(s.webhook_url("cloudwatch"))
            .header("content-type", "text/plain; charset=UTF-8")
            .header("x-amz-sns-message-type", "Notification")
            .body(Value::Object(env.clone()).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_beside_a_signed_sns_envelope_never_shape_an_alert() {
    let s = sns_server(|_| {}).await;
    // A captured signed message with an unsigned override: the alarm's own id stands.
    let r = deliver(
        &s,
        &alarm("db-cpu", "ALARM", &[("sourceAlertId", json!("x"))]),
    )
    .await;
    r.expect(202);
    assert_eq!(r.json["alerts"][0]["sourceAlertId"], alarm_arn("db-cpu"));
    let b_incident = r.incident_id();
    // Replayed with another override: still the same alarm, so a duplicate, not a new incident.
    let r = deliver(
        &s,
        &alarm("db-cpu", "ALARM", &[("sourceAlertId", json!("y"))]),
    )
    .await;
    r.expect(409);
    // A signed OK for alarm A, aimed at B's incident: it concerns A only.
    let aimed = [
        ("sourceAlertId", json!(alarm_arn("db-cpu"))),
        ("AlarmArn", json!(alarm_arn("db-cpu"))),
    ];
    let r = deliver(&s, &alarm("api-latency", "OK", &aimed)).await;
    r.expect(202);
    assert_eq!(r.outcome(), "ignored", "{}", r.text);
    assert_eq!(
        r.json["alerts"][0]["sourceAlertId"],
        alarm_arn("api-latency")
    );
    let r = deliver(&s, &alarm("db-cpu", "ALARM", &[])).await;
    r.expect(409);
    assert_eq!(r.incident_id(), b_incident, "B's incident is still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_requests_never_touch_incidents_that_signed_requests_keyed() {
    let s = Server::start().await;
    let grafana = |fp: &str, status: &str| {
        json!({"receiver": "causeflow", "status": status, "version": "1", "alerts": [
            {"status": status, "fingerprint": fp, "labels": {"alertname": "HighErrorRate"}, "annotations": {}}
        ]})
        .to_string()
    };
    let opened = s
        .post("grafana", grafana("fp1", "firing").as_bytes(), true, &[])
        .await;
    opened.expect(202);
    let oncall_resolve = |extra: Value| {
        let mut body = json!({
            "event": {"type": "resolve"},
            "alert_group": {"id": "fp1", "title": "HighErrorRate", "state": "resolved"},
        });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body.to_string()
    };
    // (b) an OnCall group id equal to the signed fingerprint, (a) a top-level override: both
    // key-only, so both land in the unsigned namespace, where nothing is open.
    for extra in [json!({}), json!({"sourceAlertId": "fp1"})] {
        let r = s
            .post("grafana", oncall_resolve(extra).as_bytes(), false, &[])
            .await;
        r.expect(202);
        assert_eq!(r.outcome(), "ignored", "{}", r.text);
    }
    // Key-only Datadog aimed at the signed generic alert of the same id: another provider.
    s.generic("shared-id", "firing").await.expect(202);
    let dd = json!({"alert_id": "shared-id", "title": "x", "alert_transition": "Recovered", "sourceAlertId": "shared-id"});
    let r = s
        .post("datadog", dd.to_string().as_bytes(), false, &[])
        .await;
    r.expect(202);
    assert_eq!(r.outcome(), "ignored");
    // The signed incidents are untouched.
    s.post("grafana", grafana("fp1", "firing").as_bytes(), true, &[])
        .await
        .expect(409);
    s.generic("shared-id", "firing").await.expect(409);
    // Unsigned OnCall groups still open and resolve their own incidents.
    let fire = json!({"event": {"type": "escalation"}, "alert_group": {"id": "fp1", "title": "t"}})
        .to_string();
    let r = s.post("grafana", fire.as_bytes(), false, &[]).await;
    r.expect(202);
    assert_eq!(r.outcome(), "created");
    let r = s
        .post("grafana", oncall_resolve(json!({})).as_bytes(), false, &[])
        .await;
    r.expect(202);
    assert_eq!(r.outcome(), "resolved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_type_header_must_agree_with_the_body_on_the_forwarder_path_too() {
    let s = Server::start().await;
    let env = alarm("db-cpu", "ALARM", &[]);
    let body = Value::Object(env).to_string();
    let r = s
        .post(
            "cloudwatch",
            body.as_bytes(),
            true,
            &[("x-amz-sns-message-type", "SubscriptionConfirmation")],
        )
        .await;
    r.expect(400);
    assert_eq!(r.code(), "invalid_sns_message");
    assert_eq!(s.dedup_rows().await, 0);
    s.post(
        "cloudwatch",
        body.as_bytes(),
        true,
        &[("x-amz-sns-message-type", "Notification")],
    )
    .await
    .expect(202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_fail_authentication_spend_no_rate() {
    let limit = RateLimit {
        per_sec: 0.01,
        burst: 3.0,
    };
    let s = sns_server(|c| c.rate_limit = limit).await;
    // Forged SNS posts on the allow-listed path: a bad signature, no credentials.
    for _ in 0..20 {
        let mut env = alarm("db-cpu", "ALARM", &[]);
        env.insert("Signature".into(), json!("Zm9yZ2Vk"));
        deliver(&s, &env).await.expect(401);
    }
    // A valid key with a forged signature.
    let body = json!({"sourceAlertId": "x", "title": "x"}).to_string();
    for _ in 0..20 {
        s.post(
            "generic",
            body.as_bytes(),
            false,
            &[("x-webhook-signature", &"0".repeat(64))],
        )
        .await
        .expect(401);
    }
    // The tenant's own alerts still get through.
    s.generic("real", "firing").await.expect(202);
    deliver(&s, &alarm("db-cpu", "ALARM", &[]))
        .await
        .expect(202);
}

fn grafana_batch(n: usize, prefix: &str) -> String {
    let alerts: Vec<Value> = (0..n)
        .map(|i| json!({"status": "firing", "fingerprint": format!("{prefix}{i}"), "labels": {"alertname": "A"}}))
        .collect();
    json!({"receiver": "causeflow", "status": "firing", "version": "1", "alerts": alerts})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_per_request_are_capped_and_charged_one_token_each() {
    let s = Server::start_with(|c| {
        c.max_alerts = 5;
        c.rate_limit = RateLimit {
            per_sec: 0.01,
            burst: 8.0,
        };
    })
    .await;
    let r = s
        .post("grafana", grafana_batch(6, "a").as_bytes(), true, &[])
        .await;
    r.expect(413);
    assert_eq!(r.code(), "too_many_alerts");
    assert!(
        r.json["detail"].as_str().unwrap().contains("Max alerts"),
        "{}",
        r.text
    );
    assert_eq!(
        s.dedup_rows().await,
        0,
        "nothing of a refused request is recorded"
    );
    let r = s
        .post("grafana", grafana_batch(5, "b").as_bytes(), true, &[])
        .await;
    r.expect(202);
    assert_eq!(r.json["alerts"].as_array().unwrap().len(), 5);
    // 5 of 8 tokens spent: another 5 alerts are over the rate, 3 are not.
    let r = s
        .post("grafana", grafana_batch(5, "c").as_bytes(), true, &[])
        .await;
    r.expect(429);
    assert!(r.header("retry-after").parse::<u64>().unwrap() >= 1);
    s.post("grafana", grafana_batch(3, "d").as_bytes(), true, &[])
        .await
        .expect(202);
}

/// Reads from `sock` until the server closes it, bounded so that a server that never closes
/// fails the test instead of hanging it. Returns what the server sent.
async fn read_until_closed(sock: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&got).into_owned()
}

fn short_limits(c: &mut causeflow_shared::host::embedded::EmbeddedConfig) {
    c.limits.header_timeout = std::time::Duration::from_millis(500);
    c.limits.request_timeout = std::time::Duration::from_millis(800);
    c.limits.idle_timeout = std::time::Duration::from_millis(700);
}

async fn connect(s: &Server) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(s.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_slow_bodies_and_idle_connections_are_cut() {
    use tokio::io::AsyncWriteExt;
    let s = Server::start_with(short_limits).await;
    // A header line, then nothing: closed once the header timeout runs out.
    let mut slow_head = connect(&s).await;
    slow_head
        .write_all(b"POST /v1/webhooks/acme/generic HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert_eq!(read_until_closed(&mut slow_head).await, "");
    // Headers, then a body that never completes: 408 problem+json, then closed.
    let mut slow_body = connect(&s).await;
    let head = format!(
        "POST /v1/webhooks/acme/generic HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         X-API-Key: {}\r\nContent-Length: 100\r\n\r\n{{\"sourceAlertId\":",
        s.api_key
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut slow_body).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("application/problem+json") && answer.contains("request_timeout"),
        "{answer}"
    );
    // A keep-alive connection that sends nothing more after its answer: closed when idle.
    let mut idle = connect(&s).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Nothing of the cut requests was recorded, and the server still answers.
    assert_eq!(s.dedup_rows().await, 0);
    s.generic("after", "firing").await.expect(202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start_with(|c| {
        c.limits.max_connections = 2;
        c.limits.header_timeout = std::time::Duration::from_secs(120);
        c.limits.idle_timeout = std::time::Duration::from_secs(120);
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = connect(&s).await;
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(c); // kept alive and idle: both slots are taken
    }
    let mut third = connect(&s).await; // the kernel's backlog takes it
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let early =
        tokio::time::timeout(std::time::Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the third connection was served beyond the cap"
    );
    drop(held.pop()); // a slot frees up
    let answer = read_until_closed(&mut third).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_alert_repeated_many_times_in_a_request_is_refused() {
    let s = Server::start().await;
    let alerts: Vec<Value> = (0..4)
        .map(|_| json!({"status": "firing", "fingerprint": "same", "labels": {}}))
        .collect();
    let body = json!({"receiver": "x", "status": "firing", "alerts": alerts}).to_string();
    let r = s.post("grafana", body.as_bytes(), true, &[]).await;
    r.expect(400);
    assert!(
        r.json["detail"].as_str().unwrap().contains("\"same\""),
        "{}",
        r.text
    );
    assert_eq!(s.dedup_rows().await, 0);
    // Three times (firing, resolved, firing) is fine.
    let alerts = json!([
        {"status": "firing", "fingerprint": "same", "labels": {}},
        {"status": "resolved", "fingerprint": "same", "labels": {}},
        {"status": "firing", "fingerprint": "same", "labels": {}},
        {"status": "firing", "fingerprint": "other", "labels": {}},
    ]);
    let body = json!({"receiver": "x", "status": "firing", "alerts": alerts}).to_string();
    let r = s.post("grafana", body.as_bytes(), true, &[]).await;
    r.expect(202);
    assert_eq!(r.outcomes(), ["created", "resolved", "created", "created"]);
}
