//! docs/contract.md#authentication: CloudWatch alarms straight from Amazon SNS into `causeflow
//! serve`. The tests make their own signing key and certificate, serve it through an injected HTTPS
//! client (which records every URL fetched), and sign envelopes of every type with both signature
//! versions.

mod common;

use std::sync::{Arc, OnceLock};

use base64::Engine;
use causeflow_shared::ports::{KeyAdmin, SubscriptionState, Subscriptions};
use common::sns_signing::{
    confirmation, notification, subscribe_url, FakeHttps, SnsSigner, CERT_URL,
};
use common::{Resp, Server};
use serde_json::{json, Map, Value};

const TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:alarms";

fn signer() -> &'static SnsSigner {
    static S: OnceLock<SnsSigner> = OnceLock::new();
    S.get_or_init(SnsSigner::new)
}

async fn start() -> (Server, Arc<FakeHttps>) {
    let https = FakeHttps::new(&signer().cert_pem);
    let s = Server::start_full(|_| {}, Some(https.clone())).await;
    (s, https)
}

/// POSTs an envelope as SNS does: text/plain, SNS headers, no headers of ours.
async fn deliver(s: &Server, env: &Map<String, Value>, extra: &[(&str, String)]) -> Resp {
    let mut req = s
        .client
        .post(s.webhook_url("cloudwatch"))
        .header("content-type", "text/plain; charset=UTF-8")
        .header("user-agent", "Amazon Simple Notification Service Agent");
    for (header, field) in [
        ("x-amz-sns-message-type", "Type"),
        ("x-amz-sns-message-id", "MessageId"),
        ("x-amz-sns-topic-arn", "TopicArn"),
    ] {
        if let Some(v) = env.get(field).and_then(Value::as_str) {
            req = req.header(header, v);
        }
    }
    for (k, v) in extra {
        req = req.header(*k, v);
    }
    Resp::from(
        req.body(Value::Object(env.clone()).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn basic(user: &str, password: &str) -> (&'static str, String) {
    (
        "authorization",
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_signature_versions_with_and_without_subject_are_accepted() {
    let (s, https) = start().await;
    s.app
        .directory
        .allow_topic("acme", TOPIC, true)
        .await
        .unwrap();
    for (version, subject) in [
        ("1", Some("ALARM: \"api-5xx-rate\" in EU (Ireland)")),
        ("2", None),
        ("1", None),
        ("2", Some("x")),
    ] {
        let mut env = notification(TOPIC, "ALARM", subject);
        signer().sign(&mut env, version);
        let r = deliver(&s, &env, &[]).await;
        assert!(
            r.status == 202 || r.status == 409,
            "v{version} subject {subject:?}: {}",
            r.text
        );
    }
    // Resolve through SNS too.
    let mut env = notification(TOPIC, "OK", None);
    signer().sign(&mut env, "2");
    let r = deliver(&s, &env, &[]).await;
    r.expect(202);
    assert_eq!(r.outcome(), "resolved");
    let inc = s
        .wait_incident(&r.incident_id(), |i| i.status.as_str() == "resolved")
        .await;
    assert_eq!(inc.agents, ["logs", "metrics", "deploys", "infrastructure"]);
    assert_eq!(inc.tags["snsTopicArn"], TOPIC);
    // The certificate was fetched once and cached.
    assert_eq!(https.calls(), [CERT_URL]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_signed_field_tampered_is_rejected() {
    let (s, _) = start().await;
    s.app
        .directory
        .allow_topic("acme", TOPIC, true)
        .await
        .unwrap();
    s.app
        .directory
        .allow_topic("acme", "arn:aws:sns:eu-west-1:123456789012:other", true)
        .await
        .unwrap();
    for version in ["1", "2"] {
        let mut env = notification(TOPIC, "ALARM", Some("ALARM: x"));
        signer().sign(&mut env, version);
        for (field, value) in [
            (
                "Message",
                json!(env["Message"].as_str().unwrap().replace("12.0", "13.0")),
            ),
            ("MessageId", json!("another-id")),
            ("Subject", json!("ALARM: y")),
            ("Timestamp", json!("2026-11-28T09:41:02.123Z")),
            (
                "TopicArn",
                json!("arn:aws:sns:eu-west-1:123456789012:other"),
            ),
            ("Signature", json!("AAAA")),
        ] {
            let mut t = env.clone();
            t.insert(field.into(), value);
            let r = deliver(&s, &t, &[]).await;
            r.expect(401);
            assert_eq!(r.code(), "signature_mismatch", "v{version} {field}");
        }
        // Removing the signed Subject changes the string to sign.
        let mut t = env.clone();
        t.remove("Subject");
        assert_eq!(deliver(&s, &t, &[]).await.status, 401);
    }
    for field in ["SubscribeURL", "Token", "Message"] {
        let mut env = confirmation("SubscriptionConfirmation", TOPIC, "tok-1");
        signer().sign(&mut env, "2");
        let v = format!("{}x", env[field].as_str().unwrap());
        env.insert(field.into(), json!(v));
        let r = deliver(&s, &env, &[]).await;
        assert_eq!(r.status, 401, "{field}: {}", r.text);
    }
    assert_eq!(s.dedup_rows().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_envelopes_are_refused_without_any_outbound_request() {
    let (s, https) = start().await;
    s.app
        .directory
        .allow_topic("acme", TOPIC, true)
        .await
        .unwrap();
    let signed = |f: &dyn Fn(&mut Map<String, Value>)| {
        let mut env = notification(TOPIC, "ALARM", None);
        f(&mut env);
        signer().sign(&mut env, "1");
        env
    };
    // Look-alike certificate hosts: refused before any fetch.
    for url in [
        "https://sns.eu-west-1.amazonaws.com.attacker.example/cert.pem",
        "https://attacker.example/sns.eu-west-1.amazonaws.com/cert.pem",
        "http://sns.eu-west-1.amazonaws.com/cert.pem",
        "https://sns.eu-west-1.amazonaws.com/cert.txt",
        "https://127.0.0.1/cert.pem",
        // An S3 bucket named `sns` answers at these names with a valid certificate.
        "https://sns.s3.amazonaws.com/SimpleNotificationService-0000test.pem",
        "https://sns.s3-accelerate.amazonaws.com/SimpleNotificationService-0000test.pem",
        // Another region than the topic's, and a .pem that is not a signing certificate.
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000test.pem",
        "https://sns.eu-west-1.amazonaws.com/other.pem",
    ] {
        let env = signed(&|e| {
            e.insert("SigningCertURL".into(), json!(url));
        });
        let r = deliver(&s, &env, &[]).await;
        r.expect(401);
        assert!(
            r.json["detail"].as_str().unwrap().contains("not trusted"),
            "{url}: {}",
            r.text
        );
    }
    // A validly signed but old message (a replay) is refused.
    let old = signed(&|e| {
        e.insert("Timestamp".into(), json!("2026-01-01T00:00:00.000Z"));
    });
    let r = deliver(&s, &old, &[]).await;
    r.expect(401);
    assert!(
        r.json["detail"].as_str().unwrap().contains("old"),
        "{}",
        r.text
    );
    // SignatureVersion 3, a disagreeing header, missing fields: 400.
    let mut v3 = notification(TOPIC, "ALARM", None);
    signer().sign(&mut v3, "2");
    v3.insert("SignatureVersion".into(), json!("3"));
    deliver(&s, &v3, &[]).await.expect(400);
    let mut mismatch = s
        .client
        .post(s.webhook_url("cloudwatch"))
        .header("content-type", "text/plain")
        .header("x-amz-sns-message-type", "SubscriptionConfirmation");
    mismatch = mismatch.body(Value::Object(signed(&|_| {})).to_string());
    let r = Resp::from(mismatch.send().await.unwrap()).await;
    r.expect(400);
    assert!(r.json["detail"].as_str().unwrap().contains("disagrees"));
    for missing in [
        "MessageId",
        "Timestamp",
        "Signature",
        "SigningCertURL",
        "TopicArn",
        "Message",
    ] {
        let mut env = signed(&|_| {});
        env.remove(missing);
        let r = deliver(&s, &env, &[]).await;
        assert!(r.status == 400 || r.status == 401, "{missing}: {}", r.text);
    }
    let mut no_token = confirmation("SubscriptionConfirmation", TOPIC, "t");
    signer().sign(&mut no_token, "1");
    no_token.remove("Token");
    deliver(&s, &no_token, &[]).await.expect(400);
    assert!(
        https.calls().iter().all(|u| u == CERT_URL),
        "only the genuine certificate URL was ever fetched: {:?}",
        https.calls()
    );
    assert!(https.calls().len() <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_credentials_after_the_challenge_bind_the_tenant() {
    let (s, https) = start().await;
    let mut env = notification(TOPIC, "ALARM", None);
    signer().sign(&mut env, "2");
    // First delivery: no credentials, topic not allowed: the challenge, and no fetch.
    let r = deliver(&s, &env, &[]).await;
    r.expect(401);
    assert_eq!(r.header("www-authenticate"), "Basic realm=\"CauseFlow\"");
    assert!(https.calls().is_empty());
    // SNS resends with the URL's credentials: the API key as the password.
    let r = deliver(&s, &env, &[basic("acme", &s.api_key)]).await;
    r.expect(202);
    // Or as the user name alone.
    let mut env2 = notification(TOPIC, "ALARM", None);
    signer().sign(&mut env2, "1");
    assert_eq!(
        deliver(&s, &env2, &[basic(&s.api_key, "")]).await.status,
        409
    );
    // Another tenant's key, a revoked key, garbage: 401 with the challenge.
    let other = s.app.directory.create_key("globex", "k").await.unwrap();
    for creds in [
        basic("acme", &other.api_key),
        basic("acme", "cf_nope"),
        ("authorization", "Basic !!!".into()),
    ] {
        let r = deliver(&s, &env, &[creds]).await;
        r.expect(401);
        assert_eq!(r.header("www-authenticate"), "Basic realm=\"CauseFlow\"");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_listed_topics_need_no_credentials_but_only_for_their_tenant() {
    let (s, _) = start().await;
    s.app.directory.create_key("globex", "k").await.unwrap();
    s.app
        .directory
        .allow_topic("globex", TOPIC, true)
        .await
        .unwrap();
    let mut env = notification(TOPIC, "ALARM", None);
    signer().sign(&mut env, "2");
    // Validly signed, but the topic belongs to globex: acme refuses it.
    let r = deliver(&s, &env, &[]).await;
    r.expect(401);
    let r = Resp::from(
        s.client
            .post(format!("{}/v1/webhooks/globex/cloudwatch", s.base))
            .header("content-type", "text/plain; charset=UTF-8")
            .body(Value::Object(env.clone()).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(202);
    // Taken off the list: refused again.
    s.app
        .directory
        .allow_topic("globex", TOPIC, false)
        .await
        .unwrap();
    let mut env = notification(TOPIC, "OK", None);
    signer().sign(&mut env, "2");
    let r = Resp::from(
        s.client
            .post(format!("{}/v1/webhooks/globex/cloudwatch", s.base))
            .header("content-type", "text/plain; charset=UTF-8")
            .body(Value::Object(env).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_confirmation_fetches_exactly_the_validated_url() {
    let (s, https) = start().await;
    s.app
        .directory
        .allow_topic("acme", TOPIC, true)
        .await
        .unwrap();
    let mut env = confirmation(
        "SubscriptionConfirmation",
        TOPIC,
        "2336412f37fb687f5d51e6e2425c464de",
    );
    signer().sign(&mut env, "1");
    // The confirmation fails once: 503, so SNS retries; the subscription stays pending.
    https
        .fail_confirm
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let r = deliver(&s, &env, &[]).await;
    r.expect(503);
    let subs = s.app.subscriptions.list("acme").await.unwrap();
    assert_eq!(subs[0].state, SubscriptionState::Pending);
    https
        .fail_confirm
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let r = deliver(&s, &env, &[]).await;
    r.expect(200);
    assert_eq!(r.json["subscription"], "confirmed");
    let expected = subscribe_url(TOPIC, "2336412f37fb687f5d51e6e2425c464de");
    assert_eq!(
        https.calls().iter().filter(|u| **u == expected).count(),
        2,
        "{:?}",
        https.calls()
    );
    let subs = s.app.subscriptions.list("acme").await.unwrap();
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].state, SubscriptionState::Confirmed);
    assert_eq!(
        subs[0].subscription_arn.as_deref(),
        Some("arn:aws:sns:eu-west-1:123456789012:alarms:5f1c")
    );

    // A SubscribeURL that is not SNS's is never fetched.
    let mut evil = confirmation("SubscriptionConfirmation", TOPIC, "t2");
    evil.insert(
        "SubscribeURL".into(),
        json!("https://attacker.example/?Action=ConfirmSubscription"),
    );
    signer().sign(&mut evil, "2");
    let before = https.calls().len();
    deliver(&s, &evil, &[]).await.expect(401);
    assert_eq!(https.calls().len(), before);

    // UnsubscribeConfirmation: acknowledged, never confirmed (no GET of its SubscribeURL).
    let mut unsub = confirmation("UnsubscribeConfirmation", TOPIC, "t3");
    signer().sign(&mut unsub, "2");
    let r = deliver(&s, &unsub, &[]).await;
    r.expect(200);
    assert!(!https.calls().iter().any(|u| u.contains("Token=t3")));
    assert_eq!(
        s.app.subscriptions.list("acme").await.unwrap()[0].state,
        SubscriptionState::Unsubscribed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_delivery_needs_our_headers() {
    let (s, _) = start().await;
    s.app
        .directory
        .allow_topic("acme", TOPIC, true)
        .await
        .unwrap();
    let env = notification(TOPIC, "ALARM", None);
    let raw_alarm = env["Message"].as_str().unwrap().to_owned();
    let r = Resp::from(
        s.client
            .post(s.webhook_url("cloudwatch"))
            .header("content-type", "text/plain")
            .header("x-amz-sns-rawdelivery", "true")
            .body(raw_alarm.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(401);
    assert_eq!(r.code(), "missing_signature");
    let r = s
        .post(
            "cloudwatch",
            raw_alarm.as_bytes(),
            true,
            &[("x-amz-sns-rawdelivery", "true")],
        )
        .await;
    r.expect(202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_seeded_certificates_are_used_without_fetching() {
    let dir = common::tempdir().join("certs");
    let path = dir.join("sns.eu-west-1.amazonaws.com");
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(
        path.join("SimpleNotificationService-0000test.pem"),
        &signer().cert_pem,
    )
    .unwrap();
    let https = FakeHttps::new("not a certificate");
    let d = dir.clone();
    let s = Server::start_full(move |c| c.sns_certs = Some(d), Some(https.clone())).await;
    s.app
        .directory
        .allow_topic("acme", TOPIC, true)
        .await
        .unwrap();
    let mut env = notification(TOPIC, "ALARM", None);
    signer().sign(&mut env, "2");
    deliver(&s, &env, &[]).await.expect(202);
    assert!(https.calls().is_empty(), "{:?}", https.calls());

    // The JSON-file form.
    let file = common::tempdir().join("certs.json");
    std::fs::write(&file, json!({ CERT_URL: signer().cert_pem }).to_string()).unwrap();
    let cache = causeflow_shared::sns::CertCache::new(https.clone());
    assert_eq!(cache.seed_from(&file).unwrap(), 1);
}
