//! A test SNS signer: its own RSA key and self-signed certificate, and envelopes of every
//! message type signed with SignatureVersion 1 or 2.
#![allow(dead_code)]

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use serde_json::{json, Map, Value};
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::der::EncodePem;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::Validity;

pub const CERT_URL: &str =
    "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0000test.pem";

pub struct SnsSigner {
    key: RsaPrivateKey,
    pub cert_pem: String,
}

impl SnsSigner {
    pub fn new() -> SnsSigner {
        let mut rng = rand::thread_rng();
        let key = RsaPrivateKey::new(&mut rng, 2048).unwrap();
        let public = key.to_public_key();
        let signer = SigningKey::<sha2::Sha256>::new(key.clone());
        let spki = SubjectPublicKeyInfoOwned::from_key(public).unwrap();
        let builder = CertificateBuilder::new(
            Profile::Root,
            SerialNumber::from(1u32),
            Validity::from_now(Duration::from_secs(3600)).unwrap(),
            Name::from_str("CN=sns.amazonaws.com").unwrap(),
            spki,
            &signer,
        )
        .unwrap();
        let cert = builder.build::<rsa::pkcs1v15::Signature>().unwrap();
        SnsSigner {
            key,
            cert_pem: cert.to_pem(x509_cert::der::pem::LineEnding::LF).unwrap(),
        }
    }

    /// Signs `env` (a map of the envelope's fields) in place with `version` "1" or "2".
    pub fn sign(&self, env: &mut Map<String, Value>, version: &str) {
        env.insert("SignatureVersion".into(), json!(version));
        let get = |k: &str| env.get(k).and_then(Value::as_str).map(str::to_owned);
        let kind = get("Type").unwrap();
        let keys: &[&str] = if kind == "Notification" {
            &[
                "Message",
                "MessageId",
                "Subject",
                "Timestamp",
                "TopicArn",
                "Type",
            ]
        } else {
            &[
                "Message",
                "MessageId",
                "SubscribeURL",
                "Timestamp",
                "Token",
                "TopicArn",
                "Type",
            ]
        };
        let mut text = String::new();
        for k in keys {
            if let Some(v) = get(k) {
                text.push_str(k);
                text.push('\n');
                text.push_str(&v);
                text.push('\n');
            }
        }
        let sig = match version {
            "1" => SigningKey::<sha1::Sha1>::new(self.key.clone())
                .sign(text.as_bytes())
                .to_vec(),
            _ => SigningKey::<sha2::Sha256>::new(self.key.clone())
                .sign(text.as_bytes())
                .to_vec(),
        };
        env.insert("Signature".into(), json!(STANDARD.encode(sig)));
    }
}

/// A CloudWatch alarm notification envelope (unsigned).
pub fn notification(topic: &str, alarm_state: &str, subject: Option<&str>) -> Map<String, Value> {
    let alarm = json!({
        "AlarmName": "api-5xx-rate", "AlarmDescription": null, "AWSAccountId": "123456789012",
        "NewStateValue": alarm_state, "NewStateReason": "Threshold Crossed: 1 datapoint [12.0] was greater than the threshold (5.0).",
        "StateChangeTime": "2026-11-28T09:41:00.000+0000", "Region": "EU (Ireland)",
        "AlarmArn": "arn:aws:cloudwatch:eu-west-1:123456789012:alarm:api-5xx-rate",
        "OldStateValue": "OK",
        "Trigger": {"MetricName": "5XXError", "Namespace": "AWS/ApiGateway", "StatisticType": "Statistic", "Statistic": "SUM",
                    "Dimensions": [{"value": "checkout-api", "name": "ApiName"}], "Period": 60, "EvaluationPeriods": 1,
                    "ComparisonOperator": "GreaterThanThreshold", "Threshold": 5.0}
    });
    let mut env = Map::new();
    env.insert("Type".into(), json!("Notification"));
    env.insert(
        "MessageId".into(),
        json!(format!("{:x}", rand::random::<u128>())),
    );
    env.insert("TopicArn".into(), json!(topic));
    if let Some(s) = subject {
        env.insert("Subject".into(), json!(s));
    }
    env.insert("Message".into(), json!(alarm.to_string()));
    env.insert("Timestamp".into(), json!(now()));
    env.insert("SigningCertURL".into(), json!(CERT_URL));
    env.insert(
        "UnsubscribeURL".into(),
        json!(format!(
            "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={topic}:sub"
        )),
    );
    env
}

/// A SubscriptionConfirmation or UnsubscribeConfirmation envelope (unsigned).
pub fn confirmation(kind: &str, topic: &str, token: &str) -> Map<String, Value> {
    let mut env = Map::new();
    env.insert("Type".into(), json!(kind));
    env.insert(
        "MessageId".into(),
        json!(format!("{:x}", rand::random::<u128>())),
    );
    env.insert("Token".into(), json!(token));
    env.insert("TopicArn".into(), json!(topic));
    env.insert("Message".into(), json!(format!("You have chosen to subscribe to the topic {topic}.\nTo confirm the subscription, visit the SubscribeURL included in this message.")));
    env.insert("SubscribeURL".into(), json!(subscribe_url(topic, token)));
    env.insert("Timestamp".into(), json!(now()));
    env.insert("SigningCertURL".into(), json!(CERT_URL));
    env
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn subscribe_url(topic: &str, token: &str) -> String {
    format!("https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={topic}&Token={token}")
}

/// An HTTPS client that serves the test certificate and confirmation answers, and records
/// every URL asked for.
pub struct FakeHttps {
    pub cert_pem: String,
    pub calls: Mutex<Vec<String>>,
    pub fail_confirm: std::sync::atomic::AtomicBool,
}

impl FakeHttps {
    pub fn new(cert_pem: &str) -> Arc<FakeHttps> {
        Arc::new(FakeHttps {
            cert_pem: cert_pem.to_owned(),
            calls: Mutex::new(Vec::new()),
            fail_confirm: Default::default(),
        })
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl causeflow_shared::sns::HttpsGet for FakeHttps {
    async fn get(&self, url: &reqwest::Url) -> Result<String, String> {
        self.calls.lock().unwrap().push(url.to_string());
        if url.as_str() == CERT_URL {
            return Ok(self.cert_pem.clone());
        }
        if url
            .query()
            .is_some_and(|q| q.contains("Action=ConfirmSubscription"))
        {
            if self.fail_confirm.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("connection reset".into());
            }
            return Ok("<ConfirmSubscriptionResponse><ConfirmSubscriptionResult><SubscriptionArn>arn:aws:sns:eu-west-1:123456789012:alarms:5f1c</SubscriptionArn></ConfirmSubscriptionResult></ConfirmSubscriptionResponse>".into());
        }
        Err(format!("unexpected fetch of {url}"))
    }
}
