//! Amazon SNS HTTP(S) delivery: envelope parsing, the canonical string each message type signs,
//! SigningCertURL / SubscribeURL validation (before any fetch), RSA signature verification
//! (SignatureVersion 1 = SHA1withRSA, 2 = SHA256withRSA) and the certificate cache
//! (docs/contract.md#authentication).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
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

/// A real AWS region name: two letters, one or more words, a number (`eu-west-1`,
/// `us-gov-west-1`, `cn-north-1`). Look-alikes such as `s3` or `s3-eu-west-1`, which S3's
/// virtual-host names would otherwise pass off as a region, do not match.
pub fn is_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    let [area, words @ .., number] = parts.as_slice() else {
        return false;
    };
    area.len() == 2
        && area.bytes().all(|b| b.is_ascii_lowercase())
        && !words.is_empty()
        && words
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
        && (1..=2).contains(&number.len())
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// The domain SNS is served under in `region`: China's regions are in their own partition.
fn sns_domain(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    }
}

/// `sns.<region>.amazonaws.com`, or `.amazonaws.com.cn` for China's regions, exactly, with a
/// real region name.
pub fn is_sns_host(host: &str) -> bool {
    let Some(rest) = host.strip_prefix("sns.") else {
        return false;
    };
    let Some((region, domain)) = rest.split_once('.') else {
        return false;
    };
    is_region(region) && domain == sns_domain(region)
}

fn check_sns_url(url: &str, what: &str) -> Result<reqwest::Url, SnsError> {
    let untrusted =
        |why: &str| SnsError::UntrustedUrl(format!("{what} {url:?} is not trusted: {why}"));
    let u = reqwest::Url::parse(url).map_err(|_| untrusted("not a URL"))?;
    if u.scheme() != "https" {
        return Err(untrusted("it must be https"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(untrusted("it carries credentials"));
    }
    if u.port().is_some_and(|p| p != 443) {
        return Err(untrusted("it names a port"));
    }
    match u.host_str() {
        // An IP address never matches: only the anchored SNS host names do.
        Some(h) if is_sns_host(h) => Ok(u),
        _ => Err(untrusted("its host is not sns.<region>.amazonaws.com")),
    }
}

/// Validates SigningCertURL: https, an SNS host, a path ending `.pem`.
pub fn check_cert_url(url: &str) -> Result<reqwest::Url, SnsError> {
    let u = check_sns_url(url, "SigningCertURL")?;
    if !u.path().ends_with(".pem") || u.query().is_some() {
        return Err(SnsError::UntrustedUrl(format!(
            "SigningCertURL {url:?} is not trusted: its path must end in .pem"
        )));
    }
    Ok(u)
}

/// Validates SubscribeURL: https on an SNS host, the ConfirmSubscription action.
pub fn check_subscribe_url(url: &str) -> Result<reqwest::Url, SnsError> {
    let u = check_sns_url(url, "SubscribeURL")?;
    let action = u
        .query_pairs()
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v.into_owned());
    if action.as_deref() != Some("ConfirmSubscription") {
        return Err(SnsError::UntrustedUrl(format!(
            "SubscribeURL {url:?} is not trusted: it is not a ConfirmSubscription link"
        )));
    }
    Ok(u)
}

/// How old a message may be: SNS's retries of one message span at most an hour.
pub const MAX_MESSAGE_AGE_SECS: i64 = 3600 + 300;

/// Binds the message's URLs to its topic: the signing certificate and the SubscribeURL must be
/// served by SNS in the topic's own region (this also rules out look-alike names such as S3
/// bucket endpoints), the certificate must be an SNS signing certificate, and the message must
/// be recent, so a captured message cannot be replayed for ever.
pub fn check_origin(m: &SnsMessage, now: chrono::DateTime<chrono::Utc>) -> Result<(), SnsError> {
    let region = topic_region(&m.topic_arn).ok_or_else(|| {
        SnsError::Invalid(format!(
            "TopicArn {:?} is not an SNS topic ARN",
            m.topic_arn
        ))
    })?;
    let host = format!("sns.{region}.{}", sns_domain(region));
    let cert = check_cert_url(&m.signing_cert_url)?;
    if Some(host.as_str()) != cert.host_str()
        || !cert.path().starts_with("/SimpleNotificationService-")
    {
        return Err(SnsError::UntrustedUrl(format!(
            "SigningCertURL {:?} is not trusted: it must be an SNS signing certificate of the topic's region ({region})",
            m.signing_cert_url
        )));
    }
    if let Some(url) = &m.subscribe_url {
        let u = check_subscribe_url(url)?;
        if Some(host.as_str()) != u.host_str() {
            return Err(SnsError::UntrustedUrl(format!(
                "SubscribeURL {url:?} is not trusted: it must be SNS in the topic's region ({region})"
            )));
        }
    }
    let sent = chrono::DateTime::parse_from_rfc3339(&m.timestamp).map_err(|_| {
        SnsError::Invalid(format!(
            "Timestamp {:?} is not an RFC 3339 time",
            m.timestamp
        ))
    })?;
    let age = now.signed_duration_since(sent).num_seconds();
    if !(-300..=MAX_MESSAGE_AGE_SECS).contains(&age) {
        return Err(SnsError::BadSignature(format!(
            "the SNS message is {age} s old; messages older than an hour (or from the future) are refused"
        )));
    }
    Ok(())
}

/// The region of `arn:<partition>:sns:<region>:<account>:<topic>`, for the partitions SNS
/// delivers from (`aws`, `aws-cn`, `aws-us-gov`) and a real region of that partition.
pub fn topic_region(topic_arn: &str) -> Option<&str> {
    let mut parts = topic_arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("sns"), Some(region), Some(account), Some(name)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let partition_ok = match partition {
        "aws" => !region.starts_with("cn-") && !region.starts_with("us-gov-"),
        "aws-cn" => region.starts_with("cn-"),
        "aws-us-gov" => region.starts_with("us-gov-"),
        _ => false,
    };
    let name_ok = (1..=256).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    (partition_ok
        && is_region(region)
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && name_ok)
        .then_some(region)
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

/// Fetches a document over HTTPS. Implemented with reqwest in production; tests inject fakes.
#[async_trait]
pub trait HttpsGet: Send + Sync {
    async fn get(&self, url: &reqwest::Url) -> Result<String, String>;
}

/// HTTPS GET with no redirects, a short timeout and a size cap. The client (and its parsed
/// trust roots) is built on first use: certificate fetches are rare, and Lambda init should not
/// pay for them.
#[derive(Default)]
pub struct ReqwestGet {
    client: std::sync::OnceLock<Result<reqwest::Client, String>>,
}

impl ReqwestGet {
    pub fn new() -> Self {
        Self::default()
    }

    fn client(&self) -> Result<&reqwest::Client, String> {
        self.client
            .get_or_init(|| {
                reqwest::Client::builder()
                    .https_only(true)
                    .redirect(reqwest::redirect::Policy::none())
                    .timeout(std::time::Duration::from_secs(5))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

#[async_trait]
impl HttpsGet for ReqwestGet {
    async fn get(&self, url: &reqwest::Url) -> Result<String, String> {
        let resp = self
            .client()?
            .get(url.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{url} answered {}", resp.status()));
        }
        if resp.content_length().is_some_and(|n| n > 64 * 1024) {
            return Err(format!("{url} is too large"));
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if body.len() > 64 * 1024 {
            return Err(format!("{url} is too large"));
        }
        String::from_utf8(body.to_vec()).map_err(|_| format!("{url} is not text"))
    }
}

/// Signing certificates by URL: pre-seeded from disk, else fetched once (after validation) and
/// kept in memory.
pub struct CertCache {
    fetcher: Arc<dyn HttpsGet>,
    keys: RwLock<HashMap<String, RsaPublicKey>>,
}

/// The RSA public key of a PEM certificate.
pub fn public_key_of(pem: &str) -> Result<RsaPublicKey, String> {
    use x509_cert::der::{DecodePem, Encode};
    let cert = x509_cert::Certificate::from_pem(pem.trim().as_bytes())
        .map_err(|e| format!("certificate: {e}"))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("certificate key: {e}"))?;
    RsaPublicKey::from_public_key_der(&spki).map_err(|e| format!("certificate key is not RSA: {e}"))
}

/// The cache key of a certificate URL: `host/path`.
fn cache_key(url: &reqwest::Url) -> String {
    format!("{}{}", url.host_str().unwrap_or_default(), url.path())
}

impl CertCache {
    pub fn new(fetcher: Arc<dyn HttpsGet>) -> Self {
        CertCache {
            fetcher,
            keys: RwLock::new(HashMap::new()),
        }
    }

    /// Adds a certificate for `url` (validated like a SigningCertURL).
    pub fn seed(&self, url: &str, pem: &str) -> Result<(), String> {
        let u = check_cert_url(url).map_err(|e| e.to_string())?;
        let key = public_key_of(pem)?;
        self.keys
            .write()
            .expect("cert cache")
            .insert(cache_key(&u), key);
        Ok(())
    }

    /// Pre-seeds from `path`: a directory laid out as `<host>/<path>.pem` (a mirror of the
    /// SigningCertURLs), or a JSON file `{"<SigningCertURL>": "<PEM>"}`. Returns how many.
    pub fn seed_from(&self, path: &Path) -> Result<usize, String> {
        let mut n = 0;
        if path.is_dir() {
            let mut stack = vec![path.to_path_buf()];
            while let Some(dir) = stack.pop() {
                for entry in
                    std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?
                {
                    let p = entry.map_err(|e| e.to_string())?.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.extension().is_some_and(|e| e == "pem") {
                        let rel = p.strip_prefix(path).map_err(|e| e.to_string())?;
                        let url = format!("https://{}", rel.to_string_lossy().replace('\\', "/"));
                        let pem = std::fs::read_to_string(&p)
                            .map_err(|e| format!("{}: {e}", p.display()))?;
                        self.seed(&url, &pem)
                            .map_err(|e| format!("{}: {e}", p.display()))?;
                        n += 1;
                    }
                }
            }
        } else {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let map: HashMap<String, String> =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            for (url, pem) in map {
                self.seed(&url, &pem)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// The key for a SigningCertURL, validating the URL before anything is fetched.
    pub async fn key(&self, url: &str) -> Result<RsaPublicKey, SnsError> {
        let u = check_cert_url(url)?;
        let k = cache_key(&u);
        if let Some(key) = self.keys.read().expect("cert cache").get(&k) {
            return Ok(key.clone());
        }
        let pem = self.fetcher.get(&u).await.map_err(|e| {
            SnsError::CertUnavailable(format!("fetching the SNS signing certificate failed: {e}"))
        })?;
        let key = public_key_of(&pem).map_err(SnsError::BadSignature)?;
        self.keys
            .write()
            .expect("cert cache")
            .insert(k, key.clone());
        Ok(key)
    }

    /// Verifies `m`'s signature.
    pub async fn verify(&self, m: &SnsMessage) -> Result<(), SnsError> {
        let key = self.key(&m.signing_cert_url).await?;
        verify_with(&key, m)
    }
}

/// Verifies `m`'s signature with `key`.
pub fn verify_with(key: &RsaPublicKey, m: &SnsMessage) -> Result<(), SnsError> {
    let bad = || SnsError::BadSignature("the SNS message signature does not verify".into());
    let sig = STANDARD.decode(m.signature.trim()).map_err(|_| bad())?;
    let sig = Signature::try_from(sig.as_slice()).map_err(|_| bad())?;
    let text = string_to_sign(m);
    let ok = match m.signature_version.as_str() {
        "1" => VerifyingKey::<sha1::Sha1>::new(key.clone())
            .verify(text.as_bytes(), &sig)
            .is_ok(),
        "2" => VerifyingKey::<sha2::Sha256>::new(key.clone())
            .verify(text.as_bytes(), &sig)
            .is_ok(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Confirms a subscription by an HTTPS GET of its (already validated) SubscribeURL, as
/// `causeflow serve` does; SNS answers with a `ConfirmSubscriptionResponse` naming the
/// subscription.
pub struct SubscribeUrlConfirmer {
    get: Arc<dyn HttpsGet>,
}

impl SubscribeUrlConfirmer {
    pub fn new(get: Arc<dyn HttpsGet>) -> Self {
        SubscribeUrlConfirmer { get }
    }
}

#[async_trait]
impl crate::ports::SubscriptionConfirmer for SubscribeUrlConfirmer {
    async fn confirm(
        &self,
        _topic_arn: &str,
        _token: &str,
        subscribe_url: &reqwest::Url,
    ) -> Result<Option<String>, String> {
        let body = self.get.get(subscribe_url).await?;
        Ok(body
            .split_once("<SubscriptionArn>")
            .and_then(|(_, rest)| rest.split_once("</SubscriptionArn>"))
            .map(|(arn, _)| arn.trim().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_urls() {
        assert!(check_cert_url(
            "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem"
        )
        .is_ok());
        assert!(check_cert_url("https://sns.cn-north-1.amazonaws.com.cn/x.pem").is_ok());
        for bad in [
            "http://sns.eu-west-1.amazonaws.com/x.pem",
            "https://sns.eu-west-1.amazonaws.com.evil.com/x.pem",
            "https://evil.com/sns.eu-west-1.amazonaws.com/x.pem",
            "https://sns.eu-west-1.amazonaws.com/x.pem?x=1",
            "https://sns.eu-west-1.amazonaws.com/x.txt",
            "https://sns.eu-west-1.amazonaws.com:8443/x.pem",
            "https://user:pw@sns.eu-west-1.amazonaws.com/x.pem",
            "https://sqs.eu-west-1.amazonaws.com/x.pem",
            "https://sns..amazonaws.com/x.pem",
            "https://SNS.EU-WEST-1.amazonaws.com.attacker.io/x.pem",
            // S3 virtual hosts of a bucket named `sns`, and partitions mixed up.
            "https://sns.s3.amazonaws.com/x.pem",
            "https://sns.s3-eu-west-1.amazonaws.com/x.pem",
            "https://sns.s3-external-1.amazonaws.com/x.pem",
            "https://sns.cn-north-1.amazonaws.com/x.pem",
            "https://sns.eu-west-1.amazonaws.com.cn/x.pem",
            "not a url",
        ] {
            assert!(check_cert_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topic_regions() {
        assert_eq!(
            topic_region("arn:aws:sns:eu-west-1:123456789012:alarms"),
            Some("eu-west-1")
        );
        assert_eq!(
            topic_region("arn:aws-cn:sns:cn-north-1:123456789012:t"),
            Some("cn-north-1")
        );
        assert_eq!(
            topic_region("arn:aws-us-gov:sns:us-gov-west-1:123456789012:t"),
            Some("us-gov-west-1")
        );
        for bad in [
            "arn:aws:sqs:eu-west-1:123456789012:q",
            "arn:aws:sns:s3:123456789012:alarms",
            "arn:aws:sns:s3-eu-west-1:123456789012:alarms",
            "arn:aws:sns:cn-north-1:123456789012:alarms",
            "arn:aws-cn:sns:eu-west-1:123456789012:alarms",
            "arn:evil:sns:eu-west-1:123456789012:alarms",
            "arn:aws:sns:eu-west-1:1:alarms",
            "arn:aws:sns:eu-west-1:123456789012:",
            "arn:aws:sns:eu-west-1:123456789012:a/b",
        ] {
            assert_eq!(topic_region(bad), None, "{bad}");
        }
        assert!(is_region("ap-southeast-7") && is_region("us-isob-east-1"));
        assert!(!is_region("s3") && !is_region("s3-eu-west-1") && !is_region("eu-west"));
    }
}
