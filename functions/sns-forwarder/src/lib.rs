//! The sample forwarder: a Lambda subscribed to a customer's SNS topic that POSTs each record to
//! CauseFlow's cloudwatch endpoint as an SNS envelope, with `X-API-Key` and an
//! `X-Webhook-Signature` over the exact bytes sent. 5xx, 429 and network errors are retried with
//! backoff; a record that still fails fails the invocation, so Lambda retries it and then hands
//! it to the failure destination: nothing is dropped silently.

use std::time::Duration;

use aws_lambda_events::event::sns::{SnsEvent, SnsRecord};
use causeflow_shared::auth::sign;
use serde_json::{json, Value};
use tracing::{info, warn};

/// Where and how to deliver.
#[derive(Clone)]
pub struct Forwarder {
    client: reqwest::Client,
    url: String,
    api_key: String,
    webhook_secret: String,
    /// Waits between attempts; one attempt more than there are entries.
    backoff: Vec<Duration>,
}

/// A record that could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("CauseFlow refused message {message_id} with {status}: {body}")]
    Refused {
        message_id: String,
        status: u16,
        body: String,
    },
    #[error("message {message_id} not delivered after {attempts} attempts: {last}")]
    GaveUp {
        message_id: String,
        attempts: usize,
        last: String,
    },
}

/// The JSON envelope SNS would have posted over HTTPS for this record.
pub fn envelope(record: &SnsRecord) -> Value {
    let m = &record.sns;
    let mut env = json!({
        "Type": m.sns_message_type,
        "MessageId": m.message_id,
        "TopicArn": m.topic_arn,
        "Message": m.message,
        "Timestamp": m.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "SignatureVersion": m.signature_version,
        "Signature": m.signature,
        "SigningCertURL": m.signing_cert_url,
        "UnsubscribeURL": m.unsubscribe_url,
    });
    if let Some(subject) = &m.subject {
        env["Subject"] = json!(subject);
    }
    env
}

impl Forwarder {
    pub fn new(url: &str, api_key: &str, webhook_secret: &str) -> Self {
        Forwarder {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client builds"),
            url: url.to_owned(),
            api_key: api_key.to_owned(),
            webhook_secret: webhook_secret.to_owned(),
            backoff: vec![
                Duration::from_millis(200),
                Duration::from_secs(1),
                Duration::from_secs(3),
            ],
        }
    }

    /// Replaces the waits between attempts (tests use short ones).
    pub fn with_backoff(mut self, backoff: Vec<Duration>) -> Self {
        self.backoff = backoff;
        self
    }

    /// Delivers every record; the first that cannot be delivered fails the invocation.
    pub async fn forward(&self, event: SnsEvent) -> Result<(), ForwardError> {
        for record in &event.records {
            self.deliver(record).await?;
        }
        Ok(())
    }

    async fn deliver(&self, record: &SnsRecord) -> Result<(), ForwardError> {
        let message_id = record.sns.message_id.clone();
        let body = envelope(record).to_string();
        let signature = sign(&self.webhook_secret, &[body.as_bytes()]);
        let attempts = self.backoff.len() + 1;
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(self.backoff[attempt - 1]).await;
            }
            let sent = self
                .client
                .post(&self.url)
                .header("content-type", "application/json")
                .header("x-api-key", &self.api_key)
                .header("x-webhook-signature", &signature)
                .body(body.clone())
                .send()
                .await;
            match sent {
                // 409: the alert is already open; delivered as far as the sender is concerned.
                Ok(r) if r.status().is_success() || r.status().as_u16() == 409 => {
                    info!(%message_id, status = r.status().as_u16(), "forwarded");
                    return Ok(());
                }
                Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                    last = format!("HTTP {}", r.status().as_u16());
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    return Err(ForwardError::Refused {
                        message_id,
                        status,
                        body: body.chars().take(500).collect(),
                    });
                }
                Err(e) => last = e.to_string(),
            }
            warn!(%message_id, attempt = attempt + 1, error = %last, "forward failed; retrying");
        }
        Err(ForwardError::GaveUp {
            message_id,
            attempts,
            last,
        })
    }
}
