//! What the pages show, prepared for the templates: every string a sender controls reaches the
//! page through askama's HTML escaping, and only `http(s)` URLs ever become links.

use askama::Template;

use crate::model::{Incident, Provider};
use crate::ports::{KeySummary, Subscription, TaskRecord};

/// The frame every signed-in page shares.
pub struct Layout {
    pub tenant: String,
    pub csrf: String,
    pub css: String,
    pub js: String,
    /// Which navigation entry is current.
    pub nav: &'static str,
    pub title: String,
}

/// A time as the server renders it (UTC) with its machine-readable form for the script.
pub struct Time {
    pub iso: String,
    pub text: String,
}

impl Time {
    pub fn new(rfc3339: &str) -> Time {
        let text = chrono::DateTime::parse_from_rfc3339(rfc3339)
            .map(|d| {
                d.with_timezone(&chrono::Utc)
                    .format("%Y-%m-%d %H:%M:%S UTC")
                    .to_string()
            })
            .unwrap_or_else(|_| rfc3339.to_owned());
        Time {
            iso: rfc3339.to_owned(),
            text,
        }
    }
}

/// A link a sender supplied: `href` only when it is an absolute http(s) URL.
pub struct Link {
    pub href: Option<String>,
    pub text: String,
}

impl Link {
    pub fn new(url: &str) -> Link {
        let safe = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .map(|u| u.to_string());
        Link {
            href: safe,
            text: url.to_owned(),
        }
    }
}

/// One row of the Incidents table.
pub struct Row {
    pub href: String,
    pub id: String,
    pub severity: &'static str,
    pub status: &'static str,
    pub title: String,
    pub provider: &'static str,
    pub service: String,
    pub first_seen: Time,
    pub last_seen: Time,
    pub duplicates: String,
    pub agents: String,
    pub test: bool,
}

impl Row {
    pub fn new(tenant: &str, i: &Incident) -> Row {
        let service = match (&i.service, &i.environment) {
            (Some(s), Some(e)) => format!("{s} / {e}"),
            (Some(s), None) => s.clone(),
            (None, Some(e)) => format!("— / {e}"),
            (None, None) => "—".into(),
        };
        Row {
            href: format!("/console/t/{tenant}/incidents/{}", i.incident_id),
            id: i.incident_id.clone(),
            severity: i.severity.as_str(),
            status: i.status.as_str(),
            title: i.title.clone(),
            provider: i.provider.as_str(),
            service,
            first_seen: Time::new(&i.first_seen),
            last_seen: Time::new(&i.last_seen),
            duplicates: i
                .duplicate_count
                .map_or_else(|| "—".to_owned(), |n| n.to_string()),
            agents: if i.agents.is_empty() {
                "—".into()
            } else {
                i.agents.join(", ")
            },
            test: i.test,
        }
    }
}

/// The rows of the Incidents table alone: the page's live updates re-fetch this.
#[derive(Template)]
#[template(path = "console/rows.html")]
pub struct Rows {
    pub rows: Vec<Row>,
}

/// An option of a filter select.
pub struct Choice {
    pub value: &'static str,
    pub selected: bool,
}

pub fn choices(all: &[&'static str], current: Option<&str>) -> Vec<Choice> {
    all.iter()
        .map(|v| Choice {
            value: v,
            selected: current == Some(*v),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "console/incidents.html")]
pub struct IncidentsPage {
    pub l: Layout,
    pub rows: Rows,
    pub statuses: Vec<Choice>,
    pub severities: Vec<Choice>,
    pub providers: Vec<Choice>,
    pub q: String,
    pub fragment: String,
    pub stream: Option<String>,
    pub next: Option<String>,
    pub first: Option<String>,
}

/// One step of an incident's history.
pub struct Event {
    pub at: Time,
    pub what: String,
}

#[derive(Template)]
#[template(path = "console/incident.html")]
pub struct IncidentPage {
    pub l: Layout,
    pub i: Incident,
    pub row: Row,
    pub links: Vec<Link>,
    pub history: Vec<Event>,
    pub tasks: Vec<TaskRecord>,
}

/// A secret shown once, right after it was made.
pub struct Shown {
    pub heading: String,
    pub key_id: String,
    pub api_key: Option<String>,
    pub webhook_secret: String,
}

pub struct KeyRow {
    pub k: KeySummary,
    pub created: Time,
    pub last_used: Option<Time>,
    pub state: &'static str,
}

#[derive(Template)]
#[template(path = "console/keys.html")]
pub struct KeysPage {
    pub l: Layout,
    pub keys: Vec<KeyRow>,
    pub shown: Option<Shown>,
    pub notice: Option<String>,
    pub error: Option<String>,
}

/// A provider on the Integrations index.
pub struct ProviderEntry {
    pub name: &'static str,
    pub label: &'static str,
    pub auth: &'static str,
}

#[derive(Template)]
#[template(path = "console/integrations.html")]
pub struct IntegrationsPage {
    pub l: Layout,
    pub providers: Vec<ProviderEntry>,
}

/// A header to set on the sender.
pub struct HeaderLine {
    pub name: &'static str,
    pub value: String,
}

pub struct TopicRow {
    pub arn: String,
}

pub struct CloudWatch {
    pub topics: Vec<TopicRow>,
    pub subscriptions: Vec<Subscription>,
}

#[derive(Template)]
#[template(path = "console/integration.html")]
pub struct IntegrationPage {
    pub l: Layout,
    pub provider: &'static str,
    pub label: &'static str,
    pub url: String,
    pub headers: Vec<HeaderLine>,
    pub steps: Vec<&'static str>,
    pub curl: String,
    pub sent: Option<String>,
    pub cloudwatch: Option<CloudWatch>,
    pub error: Option<String>,
}

pub struct AgentRow {
    pub severity: &'static str,
    pub defaults: String,
    pub current: String,
    pub overridden: bool,
}

#[derive(Template)]
#[template(path = "console/settings.html")]
pub struct SettingsPage {
    pub l: Layout,
    pub public_url: String,
    pub rate: String,
    pub rows: Vec<AgentRow>,
    pub notice: Option<String>,
    pub error: Option<String>,
}

/// A page outside a session: sign-in, signed out, not found.
#[derive(Template)]
#[template(path = "console/message.html")]
pub struct MessagePage {
    pub css: String,
    pub js: String,
    pub title: String,
    pub message: String,
    /// The sign-in form's token, when this is the sign-in page.
    pub token: Option<String>,
    pub command: Option<String>,
}

/// Human name of a provider.
pub fn label(p: Provider) -> &'static str {
    match p {
        Provider::Datadog => "Datadog",
        Provider::Grafana => "Grafana",
        Provider::Cloudwatch => "Amazon CloudWatch (SNS)",
        Provider::Sentry => "Sentry",
        Provider::Generic => "Generic webhook",
        Provider::Alertmanager => "Prometheus Alertmanager",
        Provider::Pagerduty => "PagerDuty Events v2",
    }
}
