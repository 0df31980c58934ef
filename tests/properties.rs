//! Property tests (proptest) for every parser a stranger's bytes reach: each provider's
//! normaliser, the SNS envelope and its signature, the signature header, and the queue body.
//! Through the real router (in process, over the SQLite host): arbitrary bytes and arbitrary JSON
//! never panic and are answered 2xx or 4xx with problem+json; flipping any signed byte gives 401;
//! valid payloads keep their ids. Case counts are raised with PROPTEST_CASES (docs/testing.md).

mod common;

use std::sync::OnceLock;

use axum::body::Body;
use causeflow_shared::auth::sign;
use causeflow_shared::model::{Alert, AlertStatus, Provider, QueuedAlert, Severity};
use causeflow_shared::normalize::{normalize, Context};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tower::ServiceExt;

/// The case count: `default`, or PROPTEST_CASES when set (to run longer).
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// One server (SQLite file, router) for all cases, driven in process.
struct Harness {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    api_key: String,
    secret: String,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (router, api_key, secret) = rt.block_on(async {
            let mut config = causeflow_shared::host::embedded::EmbeddedConfig::new(
                common::tempdir().join("props.db"),
            );
            config.rate_limit = causeflow_shared::http::RateLimit {
                per_sec: 0.0,
                burst: 0.0,
            };
            let app = causeflow_shared::host::embedded::Embedded::open(config).unwrap();
            let key = causeflow_shared::ports::KeyAdmin::create_key(&app.directory, "acme", "p")
                .await
                .unwrap();
            (app.router(), key.api_key, key.webhook_secret)
        });
        Harness {
            rt,
            router,
            api_key,
            secret,
        }
    })
}

/// POSTs `body` to `provider` with the key and, when `signed`, its signature; returns the status
/// and content type.
fn post(provider: &str, body: &[u8], signed: bool) -> (u16, String) {
    let h = harness();
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("/v1/webhooks/acme/{provider}"))
        .header("content-type", "application/json")
        .header("x-api-key", &h.api_key);
    if signed {
        req = req.header("x-webhook-signature", sign(&h.secret, &[body]));
    }
    let req = req.body(Body::from(body.to_vec())).unwrap();
    h.rt.block_on(async {
        let resp = h.router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        // The body is read to the end, so a panic while writing it would show.
        let _ = resp.into_body().collect().await.unwrap();
        (status, ct)
    })
}

fn assert_answered(provider: &str, status: u16, ct: &str) {
    assert!(
        (200..300).contains(&status) || (400..500).contains(&status),
        "{provider}: {status} for stranger input"
    );
    if status >= 400 {
        assert_eq!(ct, "application/problem+json", "{provider}: {status}");
    }
}

/// Arbitrary JSON, a few levels deep, with the strings senders put in their payloads mixed in.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".*".prop_map(Value::String),
        prop::sample::select(vec![
            "firing",
            "resolved",
            "alerting",
            "ok",
            "ALARM",
            "OK",
            "Triggered",
            "Recovered",
            "critical",
            "P1",
            "trigger",
            "resolve",
            "acknowledge",
            "4",
            "issue",
            "Notification",
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Object keys: any string, or one of the fields the normalisers look for.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,12}",
        prop::sample::select(vec![
            "alerts",
            "status",
            "labels",
            "annotations",
            "fingerprint",
            "title",
            "sourceAlertId",
            "alert_id",
            "alert_transition",
            "priority",
            "tags",
            "id",
            "event_type",
            "ruleId",
            "state",
            "evalMatches",
            "alert_group",
            "event",
            "Type",
            "Message",
            "TopicArn",
            "AlarmArn",
            "NewStateValue",
            "data",
            "issue",
            "action",
            "level",
            "version",
            "routing_key",
            "event_action",
            "dedup_key",
            "payload",
            "severity",
            "links",
            "test",
        ])
        .prop_map(str::to_owned),
    ]
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(key(), json_value(), 0..10).prop_map(|m| m.into_iter().collect())
}

fn provider() -> impl Strategy<Value = Provider> {
    prop::sample::select(Provider::ALL.to_vec())
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn arbitrary_bytes_are_answered_2xx_or_4xx(p in provider(), body in prop::collection::vec(any::<u8>(), 0..512), signed in any::<bool>()) {
        let (status, ct) = post(p.as_str(), &body, signed);
        assert_answered(p.as_str(), status, &ct);
    }

    #[test]
    fn arbitrary_json_is_answered_2xx_or_4xx(p in provider(), root in json_object()) {
        let body = serde_json::to_vec(&root).unwrap();
        let (status, ct) = post(p.as_str(), &body, true);
        assert_answered(p.as_str(), status, &ct);
    }

    #[test]
    fn flipping_any_signed_byte_is_401(
        p in prop::sample::select(vec!["generic", "grafana", "sentry"]),
        id in "[a-z0-9-]{1,24}",
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let h = harness();
        let body = json!({"sourceAlertId": id, "title": "flip", "status": "firing"}).to_string().into_bytes();
        let sig = sign(&h.secret, &[&body]);
        let mut flipped = body.clone();
        let i = at.index(flipped.len());
        flipped[i] ^= 1 << bit;
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("/v1/webhooks/acme/{p}"))
            .header("content-type", "application/json")
            .header("x-api-key", &h.api_key)
            .header("x-webhook-signature", sig)
            .body(Body::from(flipped))
            .unwrap();
        let status = h.rt.block_on(async { h.router.clone().oneshot(req).await.unwrap().status().as_u16() });
        prop_assert_eq!(status, 401);
    }

    #[test]
    fn valid_generic_alerts_keep_their_ids(id in "[^\\p{C}]{1,120}", title in ".{1,200}") {
        prop_assume!(!id.trim().is_empty() && !title.trim().is_empty());
        let h = harness();
        let body = json!({"sourceAlertId": id, "title": title, "status": "resolved"}).to_string().into_bytes();
        let req = http::Request::builder()
            .method("POST")
            .uri("/v1/webhooks/acme/generic")
            .header("content-type", "application/json")
            .header("x-api-key", &h.api_key)
            .header("x-webhook-signature", sign(&h.secret, &[&body]))
            .body(Body::from(body))
            .unwrap();
        let (status, out) = h.rt.block_on(async {
            let r = h.router.clone().oneshot(req).await.unwrap();
            let status = r.status().as_u16();
            let bytes = r.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap())
        });
        prop_assert_eq!(status, 202, "{}", out);
        prop_assert_eq!(out["alerts"][0]["sourceAlertId"].as_str(), Some(id.as_str()));
    }
}

proptest! {
    // Straight calls are cheap: many more cases.
    #![proptest_config(cases(2_000))]

    #[test]
    fn normalisers_never_panic(p in provider(), root in json_object(), signed in any::<bool>(), resource in prop::option::of(".{0,12}")) {
        let ctx = Context { sentry_resource: resource.as_deref(), signed };
        let _ = normalize(p, &root, ctx);
    }

    #[test]
    fn every_providers_ids_are_kept(id in "[^\\p{C}\\s][^\\p{C}]{0,80}") {
        prop_assume!(!id.trim().is_empty() && id.trim() == id);
        let cases = [
            (Provider::Datadog, json!({"alert_id": id, "title": "t", "alert_transition": "Triggered"})),
            (Provider::Grafana, json!({"status": "firing", "alerts": [{"status": "firing", "labels": {"alertname": "a"}, "annotations": {}, "fingerprint": id}]})),
            (Provider::Alertmanager, json!({"version": "4", "status": "firing", "alerts": [{"status": "firing", "labels": {"alertname": "a"}, "annotations": {}, "fingerprint": id}]})),
            (Provider::Pagerduty, json!({"event_action": "trigger", "dedup_key": id, "payload": {"summary": "s", "source": "h", "severity": "critical"}})),
            (Provider::Generic, json!({"sourceAlertId": id, "title": "t"})),
        ];
        for (p, body) in cases {
            let root = body.as_object().unwrap().clone();
            let n = normalize(p, &root, Context { sentry_resource: None, signed: true });
            match n {
                Ok(causeflow_shared::normalize::Normalized::Alerts(a)) => {
                    prop_assert_eq!(&a[0].source_alert_id, &id, "{:?}", p);
                }
                other => prop_assert!(false, "{:?}: {:?}", p, other),
            }
        }
    }

    #[test]
    fn sns_envelopes_never_panic(root in json_object(), header in prop::option::of(".{0,24}")) {
        let _ = causeflow_shared::sns::is_envelope(&root);
        let _ = causeflow_shared::sns::check_type_header(header.as_deref(), &root);
        if let Ok(m) = causeflow_shared::sns::parse(&root) {
            let _ = causeflow_shared::sns::string_to_sign(&m);
        }
    }

    #[test]
    fn signature_headers_never_panic_and_only_the_right_one_verifies(header in ".{0,80}", body in prop::collection::vec(any::<u8>(), 0..64)) {
        let secret = "whsec_property";
        let good = sign(secret, &[&body]);
        let r = causeflow_shared::auth::verify(&[secret], &[&body], &header);
        let matches = header.trim().strip_prefix("sha256=").unwrap_or(header.trim()).eq_ignore_ascii_case(&good);
        prop_assert_eq!(r.is_ok(), matches);
        for ok in [good.clone(), good.to_uppercase(), format!("sha256={good}")] {
            prop_assert!(causeflow_shared::auth::verify(&[secret], &[&body], &ok).is_ok());
        }
    }

    #[test]
    fn queue_bodies_round_trip_and_suit_sqs(title in "\\PC{0,40}|[\\u{0}-\\u{1f}\\u{fffe}\\u{ffff}]{1,8}", message in prop::option::of(".{0,200}"), id in ".{1,40}", tag in ".{0,20}") {
        let mut alert = Alert {
            source_alert_id: id,
            status: AlertStatus::Firing,
            title: String::new(),
            title_truncated: false,
            message,
            severity: Severity::High,
            service: None,
            environment: None,
            tags: [(tag.clone(), tag)].into(),
            links: Vec::new(),
            test: false,
            unsigned: false,
        };
        alert.set_title(&title);
        let msg = QueuedAlert {
            tenant_id: "acme".into(),
            provider: Provider::Generic,
            incident_id: "inc_1".into(),
            alert,
            received_at: "2026-01-01T00:00:00.000Z".into(),
            request_id: None,
        };
        let body = msg.to_queue_body();
        prop_assert!(body.chars().all(causeflow_shared::model::sqs_accepts), "{:?}", body);
        let back: QueuedAlert = serde_json::from_str(&body).unwrap();
        prop_assert_eq!(back, msg);
    }
}

/// An SNS notification signed for real: changing any byte of a signed field fails verification.
#[test]
fn flipping_any_byte_of_a_signed_sns_field_fails_verification() {
    let signer = common::sns_signing::SnsSigner::new();
    let key = causeflow_shared::sns::public_key_of(&signer.cert_pem).unwrap();
    let mut env = common::sns_signing::notification(
        "arn:aws:sns:eu-west-1:123456789012:alarms",
        "ALARM",
        Some("ALARM: high latency"),
    );
    signer.sign(&mut env, "2");
    let m = causeflow_shared::sns::parse(&env).unwrap();
    causeflow_shared::sns::verify_with(&key, &m).unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(cases(300));
    runner
        .run(
            &(
                prop::sample::select(vec![
                    "Message",
                    "MessageId",
                    "Subject",
                    "Timestamp",
                    "TopicArn",
                ]),
                any::<prop::sample::Index>(),
                1u8..=255,
            ),
            |(field, at, x)| {
                let mut bad = env.clone();
                let v = bad[field].as_str().unwrap().as_bytes().to_vec();
                let mut v = v.clone();
                let i = at.index(v.len());
                v[i] ^= x;
                let Ok(s) = String::from_utf8(v) else {
                    return Ok(());
                };
                bad.insert(field.to_owned(), Value::String(s));
                if let Ok(m) = causeflow_shared::sns::parse(&bad) {
                    prop_assert!(
                        causeflow_shared::sns::verify_with(&key, &m).is_err(),
                        "{field}"
                    );
                }
                Ok(())
            },
        )
        .unwrap();
}
