//! Domain types shared by every host: providers, severities, normalised alerts, incidents and
//! dispatch tasks. Nothing here knows about HTTP, SQLite or AWS.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `service` and `environment` longer than this many characters are cut.
pub const MAX_NAME_CHARS: usize = 256;

/// Titles longer than this many characters are cut (docs/contract.md#what-identifies-an-alert).
pub const MAX_TITLE_CHARS: usize = 1024;

/// A monitoring tool that can post to `/v1/webhooks/{tenant}/{provider}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Datadog,
    Grafana,
    Cloudwatch,
    Sentry,
    Generic,
    /// Prometheus Alertmanager's webhook receiver.
    Alertmanager,
    /// Anything that speaks the PagerDuty Events API v2.
    Pagerduty,
}

impl Provider {
    /// Every provider, in the order the docs list them.
    pub const ALL: [Provider; 7] = [
        Provider::Datadog,
        Provider::Grafana,
        Provider::Cloudwatch,
        Provider::Sentry,
        Provider::Generic,
        Provider::Alertmanager,
        Provider::Pagerduty,
    ];

    /// The path segment naming this provider.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Datadog => "datadog",
            Provider::Grafana => "grafana",
            Provider::Cloudwatch => "cloudwatch",
            Provider::Sentry => "sentry",
            Provider::Generic => "generic",
            Provider::Alertmanager => "alertmanager",
            Provider::Pagerduty => "pagerduty",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Provider {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or(())
    }
}

/// Normalised severity (docs/contract.md#severity), most severe first.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Info => "info",
        }
    }

    /// The shared vocabulary of Grafana labels and generic alerts (docs/contract.md#severity),
    /// case-insensitive.
    pub fn from_label(s: &str) -> Option<Severity> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "critical" | "crit" | "p1" => Severity::Critical,
            "high" | "error" | "major" | "p2" => Severity::High,
            "warning" | "warn" | "medium" | "p3" => Severity::Medium,
            "low" | "minor" | "p4" => Severity::Low,
            "info" | "none" | "p5" => Severity::Info,
            _ => return None,
        })
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the sender says about the alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    /// The condition holds: open an incident unless one is open.
    Firing,
    /// The condition cleared: resolve the open incident.
    Resolved,
    /// Someone is on it (a PagerDuty `acknowledge`, an OnCall acknowledge): recorded on the open
    /// incident, never a new one.
    Acknowledged,
    /// A state change that is neither firing, resolved nor an acknowledgement (CloudWatch
    /// INSUFFICIENT_DATA, an OnCall silence): answered `acknowledged`, changes nothing.
    #[serde(rename = "stateChange")]
    StateChange,
    /// A state the product ignores (Grafana legacy `paused`, `no_data`).
    Ignored,
}

/// One alert as every provider's payload is normalised into
/// (docs/contract.md#what-identifies-an-alert).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub source_alert_id: String,
    pub status: AlertStatus,
    pub title: String,
    /// True when `title` was cut to [`MAX_TITLE_CHARS`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub title_truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub links: Vec<String>,
    /// A sender's test notification: recorded, never dispatched.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
    /// No signature covered the request this alert came from (key-only Datadog or OnCall). Its
    /// dedup key lives in a namespace of its own, so it can never open, match or resolve an
    /// incident that a signed request keyed (docs/security.md). Set by the normaliser from the
    /// verification result, never from the payload.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unsigned: bool,
}

impl Alert {
    /// Sets the title, cutting it at a character boundary when it is too long.
    pub fn set_title(&mut self, title: &str) {
        match title.char_indices().nth(MAX_TITLE_CHARS) {
            Some((cut, _)) => {
                self.title = title[..cut].to_owned();
                self.title_truncated = true;
            }
            None => {
                self.title = title.to_owned();
                self.title_truncated = false;
            }
        }
    }

    /// Cuts `service` and `environment` to [`MAX_NAME_CHARS`]: they are names, not text.
    pub fn bound_fields(&mut self) {
        for v in [&mut self.service, &mut self.environment]
            .into_iter()
            .flatten()
        {
            if let Some((cut, _)) = v.char_indices().nth(MAX_NAME_CHARS) {
                v.truncate(cut);
            }
        }
    }

    /// Fills `service` and `environment` from the tags where the payload did not name them.
    pub fn derive_service_environment(&mut self) {
        if self.service.is_none() {
            self.service = non_empty(self.tags.get("service"));
        }
        if self.environment.is_none() {
            self.environment =
                non_empty(self.tags.get("env")).or_else(|| non_empty(self.tags.get("environment")));
        }
    }
}

fn non_empty(v: Option<&String>) -> Option<String> {
    v.filter(|s| !s.is_empty()).cloned()
}

/// The identity of an alert across requests (docs/contract.md#the-alert-lifecycle).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupKey {
    pub tenant_id: String,
    pub provider: Provider,
    pub source_alert_id: String,
}

/// How one alert of a request was handled; echoed in the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Created,
    Duplicate,
    Resolved,
    Ignored,
    Acknowledged,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Created,
        Outcome::Duplicate,
        Outcome::Resolved,
        Outcome::Ignored,
        Outcome::Acknowledged,
    ];

    /// The JSON name, also the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Duplicate => "duplicate",
            Outcome::Resolved => "resolved",
            Outcome::Ignored => "ignored",
            Outcome::Acknowledged => "acknowledged",
        }
    }
}

/// The per-alert answer of an ingest request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertResult {
    pub source_alert_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident_id: Option<String>,
    pub outcome: Outcome,
}

impl AlertResult {
    /// Whether the alert was queued for triage: a new incident, a resolve, or an
    /// acknowledgement of an open incident.
    pub fn queued(&self) -> bool {
        match self.outcome {
            Outcome::Created | Outcome::Resolved => true,
            Outcome::Acknowledged => self.incident_id.is_some(),
            Outcome::Duplicate | Outcome::Ignored => false,
        }
    }
}

/// What the ingest path hands to triage through the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuedAlert {
    pub tenant_id: String,
    pub provider: Provider,
    pub incident_id: String,
    /// `Firing` opens the incident; `Resolved` resolves it; `Acknowledged` acknowledges it.
    pub alert: Alert,
    /// RFC 3339 time the request was accepted.
    pub received_at: String,
    /// The admitting request's id (`X-Request-Id`), so triage's log lines for this alert carry
    /// it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// SQS's message size limit; queued alerts are cut to fit it.
pub const MAX_QUEUE_MESSAGE_BYTES: usize = 256 * 1024;

impl QueuedAlert {
    /// The queue message body, within [`MAX_QUEUE_MESSAGE_BYTES`]. A 256 KiB request can carry
    /// an alert whose JSON is a little larger once wrapped, so the free text gives way first
    /// (the message, then tags and links, then the title); status and severity are never cut.
    pub fn to_queue_body(&self) -> String {
        let body = queue_json(self);
        if body.len() <= MAX_QUEUE_MESSAGE_BYTES {
            return body;
        }
        let mut cut = self.clone();
        loop {
            let body = queue_json(&cut);
            if body.len() <= MAX_QUEUE_MESSAGE_BYTES {
                return body;
            }
            let message_len = cut.alert.message.as_ref().map_or(0, String::len);
            if message_len > 64 {
                let m = cut.alert.message.as_mut().expect("checked above");
                let keep = m.len() / 2;
                let at = (0..=keep)
                    .rev()
                    .find(|i| m.is_char_boundary(*i))
                    .unwrap_or(0);
                m.truncate(at);
                m.push_str(" [truncated]");
            } else if !cut.alert.tags.is_empty() || !cut.alert.links.is_empty() {
                cut.alert.tags.clear();
                cut.alert.links.clear();
            } else if cut.alert.message.is_some() || cut.alert.title.chars().count() > 256 {
                cut.alert.message = None;
                let title = cut.alert.title.chars().take(256).collect::<String>();
                cut.alert.set_title(&title);
            } else {
                // Only ids and names are left: cut those too rather than loop forever.
                let keep = MAX_QUEUE_MESSAGE_BYTES / 2;
                if cut.alert.service.is_some() || cut.alert.environment.is_some() {
                    cut.alert.service = None;
                    cut.alert.environment = None;
                } else if cut.alert.source_alert_id.len() > keep {
                    let id = &mut cut.alert.source_alert_id;
                    let at = (0..=keep)
                        .rev()
                        .find(|i| id.is_char_boundary(*i))
                        .unwrap_or(0);
                    id.truncate(at);
                } else {
                    return body;
                }
            }
        }
    }
}

/// JSON that SQS accepts as a message body. SQS takes only `#x9 | #xA | #xD | #x20-#xD7FF |
/// #xE000-#xFFFD | #x10000-#x10FFFF` and refuses the whole message otherwise. serde_json already
/// escapes the control characters; of what a Rust string can hold, that leaves U+FFFE and
/// U+FFFF, written here as JSON escapes, which read back as the same characters.
fn queue_json(msg: &QueuedAlert) -> String {
    let body = serde_json::to_string(msg).expect("a queued alert serialises");
    if !body.contains(['\u{FFFE}', '\u{FFFF}']) {
        return body;
    }
    body.replace('\u{FFFE}', "\\ufffe")
        .replace('\u{FFFF}', "\\uffff")
}

/// Whether SQS accepts `c` in a message body.
pub fn sqs_accepts(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// `open`, `acknowledged` (open, and someone is on it) or `resolved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum IncidentStatus {
    Open,
    Acknowledged,
    Resolved,
}

impl IncidentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Open => "open",
            IncidentStatus::Acknowledged => "acknowledged",
            IncidentStatus::Resolved => "resolved",
        }
    }

    /// Parses [`IncidentStatus::as_str`]'s names.
    pub fn parse(s: &str) -> Option<IncidentStatus> {
        [
            IncidentStatus::Open,
            IncidentStatus::Acknowledged,
            IncidentStatus::Resolved,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// Not yet resolved: open or acknowledged.
    pub fn is_active(self) -> bool {
        self != IncidentStatus::Resolved
    }
}

/// An incident as recorded by triage and read back through the API
/// (docs/contract.md#triage-and-agents).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Incident {
    pub tenant_id: String,
    pub incident_id: String,
    pub provider: Provider,
    pub source_alert_id: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub title_truncated: bool,
    pub message: Option<String>,
    pub severity: Severity,
    pub status: IncidentStatus,
    pub service: Option<String>,
    pub environment: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub links: Vec<String>,
    pub test: bool,
    pub first_seen: String,
    pub last_seen: String,
    pub resolved_at: Option<String>,
    /// When the incident was first acknowledged (PagerDuty `acknowledge`, OnCall acknowledge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<String>,
    /// Agents dispatched when the incident opened (empty for low/info and test incidents).
    pub agents: Vec<String>,
    /// Repeats of the firing answered 409 while the incident was open. Counted by hosts that
    /// record it (`causeflow serve`); absent where it is not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_count: Option<u64>,
}

impl Incident {
    /// Adds what the host counted of duplicates: `count` firings answered 409, the last at
    /// `last_ms` (Unix ms), which moves `lastSeen` of an incident still open.
    pub fn with_duplicates(&mut self, count: u64, last_ms: Option<i64>) {
        self.duplicate_count = Some(count);
        if let Some(at) = last_ms.and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis) {
            let at = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            // RFC 3339 in UTC with the same precision sorts as text.
            if at > self.last_seen && self.status.is_active() {
                self.last_seen = at;
            }
        }
    }

    /// Marks an open incident acknowledged at `at`; `false` (and no change) when it is already
    /// acknowledged or resolved.
    pub fn acknowledge(&mut self, at: &str) -> bool {
        if self.status != IncidentStatus::Open {
            return false;
        }
        self.status = IncidentStatus::Acknowledged;
        self.acknowledged_at = Some(at.to_owned());
        true
    }
}

/// `dispatch` starts an investigation; `cancel` stops one when the incident resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    Dispatch,
    Cancel,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Dispatch => "dispatch",
            TaskKind::Cancel => "cancel",
        }
    }
}

/// One message to one investigation agent (docs/contract.md#severity).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DispatchTask {
    pub task_id: String,
    pub kind: TaskKind,
    pub incident_id: String,
    pub tenant_id: String,
    pub agent: String,
    pub severity: Severity,
    pub summary: AlertSummary,
    pub dispatched_at: String,
}

/// What an agent needs to start looking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertSummary {
    pub provider: Provider,
    pub source_alert_id: String,
    pub title: String,
    pub service: Option<String>,
    pub environment: Option<String>,
    pub links: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_titles_are_cut_at_a_char_boundary() {
        let mut a = sample();
        let title: String = "é".repeat(MAX_TITLE_CHARS + 5);
        a.set_title(&title);
        assert!(a.title_truncated);
        assert_eq!(a.title.chars().count(), MAX_TITLE_CHARS);
        a.set_title("short");
        assert!(!a.title_truncated);
    }

    #[test]
    fn queue_bodies_fit_the_sqs_limit() {
        let mut a = sample();
        a.message = Some("\u{1F525}\"".repeat(100_000));
        a.tags.insert("k".into(), "v".repeat(100_000));
        let q = queued(a);
        let body = q.to_queue_body();
        assert!(body.len() <= MAX_QUEUE_MESSAGE_BYTES, "{}", body.len());
        let back: QueuedAlert = serde_json::from_str(&body).unwrap();
        assert_eq!(back.incident_id, "inc_1");
        assert!(back.alert.message.unwrap().ends_with("[truncated]"));
    }

    #[test]
    fn queue_bodies_hold_only_characters_sqs_accepts() {
        let mut a = sample();
        a.title = "noncharacters \u{FFFE}\u{FFFF} and controls \u{0}\u{1F}\u{7F}".into();
        a.message = Some("\u{FFFF}".repeat(10));
        a.tags.insert("k\u{FFFE}".into(), "\u{FFFF}".into());
        let q = queued(a);
        let body = q.to_queue_body();
        assert!(body.chars().all(sqs_accepts), "{body:?}");
        let back: QueuedAlert = serde_json::from_str(&body).unwrap();
        assert_eq!(back, q, "escaped, not lost");
    }

    #[test]
    fn severity_vocabulary_is_case_insensitive() {
        assert_eq!(Severity::from_label("CRIT"), Some(Severity::Critical));
        assert_eq!(Severity::from_label("Major"), Some(Severity::High));
        assert_eq!(Severity::from_label("p4"), Some(Severity::Low));
        assert_eq!(Severity::from_label("urgent"), None);
    }

    fn queued(alert: Alert) -> QueuedAlert {
        QueuedAlert {
            tenant_id: "t".into(),
            provider: Provider::Generic,
            incident_id: "inc_1".into(),
            alert,
            received_at: "2026-11-28T00:00:00Z".into(),
            request_id: None,
        }
    }

    fn sample() -> Alert {
        Alert {
            source_alert_id: "a".into(),
            status: AlertStatus::Firing,
            title: String::new(),
            title_truncated: false,
            message: None,
            severity: Severity::High,
            service: None,
            environment: None,
            tags: BTreeMap::new(),
            links: vec![],
            test: false,
            unsigned: false,
        }
    }
}
