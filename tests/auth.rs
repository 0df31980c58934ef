//! docs/contract.md#authentication: every authentication rule, over real HTTP.

mod common;

use causeflow_shared::auth::sign;
use causeflow_shared::ports::KeyAdmin;
use common::{Resp, Server};
use serde_json::json;

fn generic_body(id: &str) -> Vec<u8> {
    json!({"sourceAlertId": id, "title": "disk full", "status": "firing"})
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_headers_are_named() {
    let s = Server::start().await;
    let body = generic_body("a1");
    let sig = sign(&s.secret, &[&body]);

    let r = s
        .post_exact("generic", &body, &[("x-webhook-signature", &sig)])
        .await;
    r.expect(401);
    assert_eq!(r.code(), "missing_api_key");
    assert!(r.json["detail"].as_str().unwrap().contains("X-API-Key"));

    for provider in ["generic", "grafana", "sentry", "cloudwatch"] {
        let r = s
            .post_exact(provider, &body, &[("x-api-key", &s.api_key)])
            .await;
        r.expect(401);
        assert_eq!(r.code(), "missing_signature", "{provider}");
        assert!(
            r.json["detail"].as_str().unwrap().contains("Signature"),
            "{provider}: {}",
            r.text
        );
    }
    // An empty header counts as missing, not as a malformed signature.
    let r = s
        .post_exact(
            "generic",
            &body,
            &[("x-api-key", &s.api_key), ("x-webhook-signature", "")],
        )
        .await;
    assert_eq!(r.code(), "missing_signature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_revoked_and_foreign_keys_get_one_answer() {
    let s = Server::start().await;
    let other = s
        .app
        .directory
        .create_key("globex", "theirs")
        .await
        .unwrap();
    let revoked = s.app.directory.create_key("acme", "old").await.unwrap();
    s.app
        .directory
        .revoke_key("acme", &revoked.key_id)
        .await
        .unwrap();
    let body = generic_body("a1");

    let mut details = Vec::new();
    for (key, secret) in [
        ("cf_not_a_key", s.secret.as_str()),
        (other.api_key.as_str(), other.webhook_secret.as_str()),
        (revoked.api_key.as_str(), revoked.webhook_secret.as_str()),
    ] {
        let sig = sign(secret, &[&body]);
        let r = s
            .post_exact(
                "generic",
                &body,
                &[("x-api-key", key), ("x-webhook-signature", &sig)],
            )
            .await;
        r.expect(401);
        assert_eq!(r.code(), "invalid_api_key");
        details.push(r.json["detail"].clone());
    }
    assert!(
        details.windows(2).all(|w| w[0] == w[1]),
        "answers differ: {details:?}"
    );

    // The same foreign key reads no incidents of this tenant either.
    let r = Resp::from(
        s.client
            .get(format!("{}/v1/tenants/acme/incidents", s.base))
            .header("x-api-key", &other.api_key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(401);
    assert_eq!(r.code(), "invalid_api_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_takes_effect_on_the_next_request() {
    let s = Server::start().await;
    s.generic("r1", "firing").await.expect(202);
    s.app.directory.revoke_key("acme", &s.key_id).await.unwrap();
    let r = s.generic("r2", "firing").await;
    r.expect(401);
    assert_eq!(r.code(), "invalid_api_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_forms_and_mismatches() {
    let s = Server::start().await;
    let body = generic_body("s1");
    let sig = sign(&s.secret, &[&body]);
    let key = ("x-api-key", s.api_key.as_str());

    // Upper-case hex with the sha256= prefix verifies.
    let upper = format!("sha256={}", sig.to_uppercase());
    s.post_exact("generic", &body, &[key, ("x-webhook-signature", &upper)])
        .await
        .expect(202);

    let body2 = generic_body("s2");
    for bad in [
        sign("wrong-secret", &[&body2]),
        sig[..40].to_owned(), // partial signature
        format!("{sig}00"),   // too long
        "not-hex".to_owned(),
        sign(&s.secret, &[&body]), // a signature of another body
    ] {
        let r = s
            .post_exact("generic", &body2, &[key, ("x-webhook-signature", &bad)])
            .await;
        r.expect(401);
        assert_eq!(r.code(), "signature_mismatch", "{bad}");
    }
    // One flipped byte in the body.
    let mut tampered = body2.clone();
    tampered[5] ^= 1;
    let r = s
        .post_exact(
            "generic",
            &tampered,
            &[key, ("x-webhook-signature", &sign(&s.secret, &[&body2]))],
        )
        .await;
    assert_eq!(r.code(), "signature_mismatch");
    assert_eq!(
        s.dedup_rows().await,
        1,
        "nothing recorded for refused requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secrets_both_verify_until_retired() {
    let s = Server::start().await;
    let new = s
        .app
        .directory
        .rotate_secret("acme", &s.key_id)
        .await
        .unwrap();
    let key = ("x-api-key", s.api_key.as_str());
    for (i, secret) in [s.secret.as_str(), new.as_str()].into_iter().enumerate() {
        let body = generic_body(&format!("rot{i}"));
        s.post_exact(
            "generic",
            &body,
            &[key, ("x-webhook-signature", &sign(secret, &[&body]))],
        )
        .await
        .expect(202);
    }
    s.app
        .directory
        .retire_secret("acme", &s.key_id)
        .await
        .unwrap();
    let body = generic_body("rot-old");
    let r = s
        .post_exact(
            "generic",
            &body,
            &[key, ("x-webhook-signature", &sign(&s.secret, &[&body]))],
        )
        .await;
    assert_eq!(r.code(), "signature_mismatch");
    let body = generic_body("rot-new");
    s.post_exact(
        "generic",
        &body,
        &[key, ("x-webhook-signature", &sign(&new, &[&body]))],
    )
    .await
    .expect(202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datadog_needs_only_the_key_but_a_signature_must_verify() {
    let s = Server::start().await;
    let body = json!({"alert_id": "77", "title": "x", "alert_type": "error"}).to_string();
    let key = ("x-api-key", s.api_key.as_str());
    s.post_exact("datadog", body.as_bytes(), &[key])
        .await
        .expect(202);
    // The product page tells Datadog users to leave the header blank.
    let body = json!({"alert_id": "78", "title": "x"}).to_string();
    s.post_exact(
        "datadog",
        body.as_bytes(),
        &[key, ("x-webhook-signature", "")],
    )
    .await
    .expect(202);
    let body = json!({"alert_id": "79", "title": "x"}).to_string();
    let r = s
        .post_exact(
            "datadog",
            body.as_bytes(),
            &[
                key,
                ("x-webhook-signature", &sign("nope", &[body.as_bytes()])),
            ],
        )
        .await;
    assert_eq!(r.code(), "signature_mismatch");
}

fn grafana_body(fp: &str) -> Vec<u8> {
    json!({"receiver":"causeflow","status":"firing","orgId":1,"alerts":[{"status":"firing","labels":{"alertname":"HighCPU"},
        "annotations":{},"startsAt":"2026-11-28T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","fingerprint":fp}],"version":"1"})
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_signature_headers_and_timestamp_window() {
    let s = Server::start().await;
    let key = ("x-api-key", s.api_key.as_str());
    let now = chrono::Utc::now().timestamp();

    // Grafana's default header name.
    let b = grafana_body("f1");
    s.post_exact(
        "grafana",
        &b,
        &[
            key,
            ("x-grafana-alerting-signature", &sign(&s.secret, &[&b])),
        ],
    )
    .await
    .expect(202);

    // Timestamped: Grafana signs "{ts}:{body}"; both timestamp header names are accepted.
    for (i, (ts_header, offset, ok)) in [
        ("x-webhook-timestamp", -60, true),
        ("x-grafana-alerting-signature-timestamp", 120, true),
        ("x-webhook-timestamp", -301, false),
        ("x-grafana-alerting-signature-timestamp", 400, false),
    ]
    .into_iter()
    .enumerate()
    {
        let b = grafana_body(&format!("ts{i}"));
        let ts = (now + offset).to_string();
        let sig = sign(&s.secret, &[ts.as_bytes(), b":", &b]);
        let r = s
            .post_exact(
                "grafana",
                &b,
                &[key, ("x-webhook-signature", &sig), (ts_header, &ts)],
            )
            .await;
        if ok {
            r.expect(202);
        } else {
            r.expect(401);
            assert_eq!(r.code(), "stale_timestamp", "{ts_header} {offset}");
        }
    }
    // A body-only signature sent with a timestamp header does not verify.
    let b = grafana_body("ts-wrong");
    let ts = now.to_string();
    let r = s
        .post_exact(
            "grafana",
            &b,
            &[
                key,
                ("x-webhook-signature", &sign(&s.secret, &[&b])),
                ("x-webhook-timestamp", &ts),
            ],
        )
        .await;
    assert_eq!(r.code(), "signature_mismatch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oncall_may_skip_the_signature_but_other_grafana_payloads_may_not() {
    let s = Server::start().await;
    let key = ("x-api-key", s.api_key.as_str());
    let oncall = json!({"event":{"type":"escalation","time":"2026-11-28T10:00:00Z"},
        "alert_group":{"id":"IABC","state":"firing","title":"DB down"},"alert_group_id":"IABC","alert_payload":{}})
    .to_string();
    s.post_exact("grafana", oncall.as_bytes(), &[key])
        .await
        .expect(202);
    let r = s
        .post_exact(
            "grafana",
            oncall.as_bytes(),
            &[
                key,
                ("x-webhook-signature", &sign("bad", &[oncall.as_bytes()])),
            ],
        )
        .await;
    assert_eq!(r.code(), "signature_mismatch");
    let r = s.post_exact("grafana", &grafana_body("g1"), &[key]).await;
    assert_eq!(r.code(), "missing_signature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentry_hook_signature_uses_the_registered_client_secret() {
    let s = Server::start().await;
    let key = ("x-api-key", s.api_key.as_str());
    let body = json!({"action":"created","installation":{"uuid":"u"},"data":{"issue":{"id":"1001","title":"TypeError","level":"error"}},
        "actor":{"type":"application","id":"sentry","name":"Sentry"}})
    .to_string();
    let hook = ("sentry-hook-resource", "issue");
    let client_secret = "sentry-client-secret-123";
    let sig = sign(client_secret, &[body.as_bytes()]);

    let r = s
        .post_exact(
            "sentry",
            body.as_bytes(),
            &[key, hook, ("sentry-hook-signature", &sig)],
        )
        .await;
    r.expect(401);
    assert!(
        r.json["detail"]
            .as_str()
            .unwrap()
            .contains("set-sentry-secret"),
        "{}",
        r.text
    );

    s.app
        .directory
        .set_sentry_secret("acme", &s.key_id, client_secret)
        .await
        .unwrap();
    s.post_exact(
        "sentry",
        body.as_bytes(),
        &[key, hook, ("sentry-hook-signature", &sig)],
    )
    .await
    .expect(202);
    let r = s
        .post_exact(
            "sentry",
            body.as_bytes(),
            &[
                key,
                hook,
                ("sentry-hook-signature", &sign("x", &[body.as_bytes()])),
            ],
        )
        .await;
    assert_eq!(r.code(), "signature_mismatch");
    // The webhook secret works for Sentry too.
    let body2 = body.replace("1001", "1002");
    s.post_exact(
        "sentry",
        body2.as_bytes(),
        &[
            key,
            hook,
            ("x-webhook-signature", &sign(&s.secret, &[body2.as_bytes()])),
        ],
    )
    .await
    .expect(202);
}
