//! The SNS envelope: its three message types, parsing with every signed field required, and the
//! canonical string each type signs.

use serde_json::{Map, Value};

/// The three message types SNS posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnsType {
    Notification,
    SubscriptionConfirmation,
    UnsubscribeConfirmation,
}

impl SnsType {
    pub fn as_str(self) -> &'static str {
        match self {
            SnsType::Notification => "Notification",
            SnsType::SubscriptionConfirmation => "SubscriptionConfirmation",
            SnsType::UnsubscribeConfirmation => "UnsubscribeConfirmation",
        }
    }
}

/// A parsed SNS envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnsMessage {
    pub kind: SnsType,
    pub message_id: String,
    pub topic_arn: String,
    pub subject: Option<String>,
    pub message: String,
    pub timestamp: String,
    pub signature_version: String,
    pub signature: String,
    pub signing_cert_url: String,
    pub subscribe_url: Option<String>,
    pub token: Option<String>,
}

/// Why an SNS message was refused. `Invalid` answers 400, the others 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnsError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    UntrustedUrl(String),
    #[error("{0}")]
    BadSignature(String),
    /// The certificate could not be fetched: the sender should retry (503).
    #[error("{0}")]
    CertUnavailable(String),
}

/// Whether a body looks like an SNS envelope (as opposed to a bare alarm or raw delivery).
pub fn is_envelope(root: &Map<String, Value>) -> bool {
    root.contains_key("Type")
        && (root.contains_key("Signature") || root.contains_key("SigningCertURL"))
}

fn field(root: &Map<String, Value>, names: &[&str]) -> Result<Option<String>, SnsError> {
    for n in names {
        match root.get(*n) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => return Ok(Some(s.clone())),
            Some(_) => return Err(SnsError::Invalid(format!("SNS field {n} must be a string"))),
        }
    }
    Ok(None)
}

fn required(root: &Map<String, Value>, names: &[&str]) -> Result<String, SnsError> {
    field(root, names)?
        .ok_or_else(|| SnsError::Invalid(format!("the SNS message has no {}", names[0])))
}

/// Parses an envelope, requiring every field its type signs. Lambda-style `SigningCertUrl` and
/// `SubscribeUrl` spellings are accepted too (the sample forwarder may pass them on).
pub fn parse(root: &Map<String, Value>) -> Result<SnsMessage, SnsError> {
    let kind = match required(root, &["Type"])?.as_str() {
        "Notification" => SnsType::Notification,
        "SubscriptionConfirmation" => SnsType::SubscriptionConfirmation,
        "UnsubscribeConfirmation" => SnsType::UnsubscribeConfirmation,
        other => {
            return Err(SnsError::Invalid(format!(
                "unknown SNS message Type {other:?}"
            )))
        }
    };
    let confirmation = kind != SnsType::Notification;
    let msg = SnsMessage {
        kind,
        message_id: required(root, &["MessageId"])?,
        topic_arn: required(root, &["TopicArn"])?,
        subject: if confirmation {
            None
        } else {
            field(root, &["Subject"])?
        },
        message: required(root, &["Message"])?,
        timestamp: required(root, &["Timestamp"])?,
        signature_version: required(root, &["SignatureVersion"])?,
        signature: required(root, &["Signature"])?,
        signing_cert_url: required(root, &["SigningCertURL", "SigningCertUrl"])?,
        subscribe_url: if confirmation {
            Some(required(root, &["SubscribeURL", "SubscribeUrl"])?)
        } else {
            None
        },
        token: if confirmation {
            Some(required(root, &["Token"])?)
        } else {
            None
        },
    };
    if !matches!(msg.signature_version.as_str(), "1" | "2") {
        return Err(SnsError::Invalid(format!(
            "SignatureVersion {:?} is not supported (1 or 2)",
            msg.signature_version
        )));
    }
    Ok(msg)
}

impl SnsMessage {
    /// The envelope rebuilt from the fields SNS signs and nothing else: what a verified message
    /// may be normalised from. Anything else in the body (a `sourceAlertId` added beside the
    /// envelope, say) is not covered by the signature, so it must not shape an alert.
    pub fn signed_envelope(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: &str| {
            m.insert(k.to_owned(), Value::String(v.to_owned()));
        };
        put("Type", self.kind.as_str());
        put("MessageId", &self.message_id);
        put("TopicArn", &self.topic_arn);
        put("Message", &self.message);
        put("Timestamp", &self.timestamp);
        if let Some(s) = &self.subject {
            put("Subject", s);
        }
        m
    }
}

/// The string SNS signs for this message: `Key\nValue\n` for each signed key, in order.
pub fn string_to_sign(m: &SnsMessage) -> String {
    let mut out = String::new();
    let mut add = |k: &str, v: &str| {
        out.push_str(k);
        out.push('\n');
        out.push_str(v);
        out.push('\n');
    };
    add("Message", &m.message);
    add("MessageId", &m.message_id);
    match m.kind {
        SnsType::Notification => {
            if let Some(s) = &m.subject {
                add("Subject", s);
            }
        }
        _ => add(
            "SubscribeURL",
            m.subscribe_url.as_deref().unwrap_or_default(),
        ),
    }
    add("Timestamp", &m.timestamp);
    if m.kind != SnsType::Notification {
        add("Token", m.token.as_deref().unwrap_or_default());
    }
    add("TopicArn", &m.topic_arn);
    add("Type", m.kind.as_str());
    out
}

/// Refuses an SNS delivery whose `x-amz-sns-message-type` header disagrees with the body's
/// `Type`, on every path that reads an SNS envelope (direct or forwarded).
pub fn check_type_header(header: Option<&str>, root: &Map<String, Value>) -> Result<(), SnsError> {
    match (header, root.get("Type")) {
        (Some(h), Some(Value::String(t))) if h != t => Err(SnsError::Invalid(format!(
            "x-amz-sns-message-type {h:?} disagrees with the message Type {t:?}"
        ))),
        (Some(h), None) => Err(SnsError::Invalid(format!(
            "x-amz-sns-message-type {h:?} was sent but the body has no SNS Type"
        ))),
        _ => Ok(()),
    }
}
