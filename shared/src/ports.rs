//! The narrow ports the domain talks through. Each has an embedded SQLite implementation (in
//! `sqlite`) and an AWS one (DynamoDB, SQS, SNS); no storage SDK type crosses them.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::auth::IssuedKey;
use crate::error::StoreError;
use crate::model::{Alert, AlertResult, DispatchTask, Incident, IncidentStatus, Provider};
use crate::policy::AgentOverrides;

/// An API key as the ingest path needs it. Secrets are present because HMAC needs them; the key
/// itself is only known by its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub key_id: String,
    pub tenant_id: String,
    pub name: String,
    /// The current webhook secret first, then the previous one while a rotation is in progress.
    pub webhook_secrets: Vec<String>,
    /// Sentry integration Client Secret, for `Sentry-Hook-Signature`.
    pub sentry_client_secret: Option<String>,
    pub revoked: bool,
}

/// API keys, as the ingest path looks them up.
#[async_trait]
pub trait ApiKeys: Send + Sync {
    /// The key whose SHA-256 digest is `key_hash`, revoked or not.
    async fn key_by_hash(&self, key_hash: &str) -> Result<Option<KeyRecord>, StoreError>;
}

/// A tenant's settings, as triage reads them.
#[async_trait]
pub trait TenantSettings: Send + Sync {
    /// The tenant's replacement rows for the severity -> agents table.
    async fn agent_overrides(&self, tenant_id: &str) -> Result<AgentOverrides, StoreError>;
}

/// The SNS topics a tenant lets post without credentials.
#[async_trait]
pub trait TopicAllowList: Send + Sync {
    /// Whether SNS messages from `topic_arn` may post to this tenant without credentials.
    async fn topic_allowed(&self, tenant_id: &str, topic_arn: &str) -> Result<bool, StoreError>;
}

/// The dedup lifecycle and the alert queue (docs/contract.md#the-alert-lifecycle).
#[async_trait]
pub trait AlertLedger: Send + Sync {
    /// Applies the lifecycle to each alert in order and queues what triage must see. Alerts
    /// answered `created` or `resolved` are durably queued when this returns `Ok`; on `Err`
    /// nothing of the failed alert is left behind, so the sender's retry succeeds.
    async fn admit(
        &self,
        tenant_id: &str,
        provider: Provider,
        alerts: &[Alert],
        received_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<AlertResult>, StoreError>;

    /// Queues a dead-lettered message again under its own incident id (`causeflow dead-letters
    /// redrive`). A firing takes its key back when the key is free or still names its incident,
    /// and is answered `duplicate` (nothing queued) when another incident holds the key by now; a
    /// resolve is queued and releases a key that still names its incident. Triage is idempotent
    /// by incident id, so a message that was partly triaged before is finished, not doubled.
    async fn requeue(&self, msg: &crate::model::QueuedAlert) -> Result<AlertResult, StoreError>;
}

/// Gives up the dedup key of an alert that triage could not process, so the next firing opens a
/// new incident instead of a 409 naming one that never existed.
#[async_trait]
pub trait KeyRelease: Send + Sync {
    /// Deletes the key of `msg`'s alert if it still names `msg`'s incident.
    async fn release(&self, msg: &crate::model::QueuedAlert) -> Result<(), StoreError>;
}

/// Incidents, written by triage and read by the API.
#[async_trait]
pub trait IncidentStore: Send + Sync {
    /// Inserts `incident` unless one with its id exists; returns what is stored.
    async fn open(&self, incident: Incident) -> Result<Incident, StoreError>;
    /// Marks the incident resolved (inserting `incident` as given when it was never opened);
    /// returns what is stored.
    async fn resolve(&self, incident: Incident) -> Result<Incident, StoreError>;
    /// Marks an open incident acknowledged at `at` (RFC 3339); an acknowledged or resolved one is
    /// left as it is. `None`: the incident is not recorded (yet).
    async fn acknowledge(
        &self,
        tenant_id: &str,
        incident_id: &str,
        at: &str,
    ) -> Result<Option<Incident>, StoreError>;
    async fn get(&self, tenant_id: &str, incident_id: &str)
        -> Result<Option<Incident>, StoreError>;
    /// Newest first.
    async fn list(
        &self,
        tenant_id: &str,
        query: &IncidentQuery,
    ) -> Result<IncidentPage, StoreError>;
}

/// A page request of `GET /v1/tenants/{t}/incidents`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct IncidentQuery {
    pub status: Option<IncidentStatus>,
    /// Console filters; `None` = any.
    pub severity: Option<crate::model::Severity>,
    pub provider: Option<Provider>,
    /// Case-insensitive text in the title, message, service, environment or source alert id.
    pub text: Option<String>,
    pub limit: usize,
    /// Opaque: the last incident id of the previous page.
    pub cursor: Option<String>,
}

/// One page of incidents.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IncidentPage {
    pub incidents: Vec<Incident>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Most incidents one filtered list request examines before it returns what it has found, with a
/// cursor to go on from: a rare match never turns one request into a scan of the whole tenant.
pub const MAX_EXAMINED: usize = 2_000;

impl IncidentQuery {
    /// Whether a filter other than status (which stores answer from an index) is set.
    pub fn filters(&self) -> bool {
        self.severity.is_some() || self.provider.is_some() || self.text.is_some()
    }

    /// Whether `i` passes the severity, provider and text filters.
    pub fn matches(&self, i: &Incident) -> bool {
        if self.severity.is_some_and(|s| s != i.severity)
            || self.provider.is_some_and(|p| p != i.provider)
        {
            return false;
        }
        let Some(text) = &self.text else { return true };
        let needle = text.to_lowercase();
        [
            Some(i.title.as_str()),
            i.message.as_deref(),
            i.service.as_deref(),
            i.environment.as_deref(),
            Some(i.source_alert_id.as_str()),
        ]
        .into_iter()
        .flatten()
        .any(|h| h.to_lowercase().contains(&needle))
    }
}

impl IncidentPage {
    /// A filtered page: the matches among `examined` incidents read newest first. When the
    /// examination stopped at [`MAX_EXAMINED`] rows (`more` = rows remain), the cursor is the last
    /// examined id, so the next request goes on from there.
    pub fn filtered(
        matches: Vec<Incident>,
        limit: usize,
        last_examined: Option<String>,
        more: bool,
    ) -> IncidentPage {
        let mut page = IncidentPage::from_overfetch(matches, limit);
        if page.next_cursor.is_none() && more {
            page.next_cursor = last_examined;
        }
        page
    }

    /// A page from up to `limit + 1` incidents, newest first: stores fetch one more than asked,
    /// and its presence is what says there is a next page.
    pub fn from_overfetch(mut incidents: Vec<Incident>, limit: usize) -> IncidentPage {
        let next_cursor = if incidents.len() > limit {
            incidents.truncate(limit);
            incidents.last().map(|i| i.incident_id.clone())
        } else {
            None
        };
        IncidentPage {
            incidents,
            next_cursor,
        }
    }
}

/// Hands tasks to investigation agents.
#[async_trait]
pub trait Dispatcher: Send + Sync {
    /// Publishes `task`; publishing the same `task_id` again is a no-op.
    async fn dispatch(&self, task: &DispatchTask) -> Result<(), StoreError>;

    /// Publishes several tasks. One call per incident lets a store write them together (the
    /// embedded outbox takes one commit slot instead of one per agent); the default publishes
    /// them one by one, in order.
    async fn dispatch_all(&self, tasks: &[DispatchTask]) -> Result<(), StoreError> {
        for task in tasks {
            self.dispatch(task).await?;
        }
        Ok(())
    }
}

/// A key as `keys list` shows it: never the key or its secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeySummary {
    pub key_id: String,
    pub tenant_id: String,
    pub name: String,
    pub created_at: String,
    pub revoked: bool,
    /// A previous secret still verifies (rotation in progress).
    pub rotating: bool,
    pub has_sentry_secret: bool,
    /// When the key last authenticated a request (RFC 3339, to about a minute), where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
}

/// When each API key last authenticated a request. Kept apart from the keys themselves, so the
/// ingest path that records it never needs write access to keys.
#[async_trait]
pub trait KeyUsage: Send + Sync {
    /// Records that `key_id` was used at `at_ms` (Unix milliseconds); later times win.
    async fn record_use(&self, key_id: &str, at_ms: i64) -> Result<(), StoreError>;
    /// The last use of each of `key_ids` that has one (Unix milliseconds).
    async fn last_used(
        &self,
        key_ids: &[String],
    ) -> Result<std::collections::HashMap<String, i64>, StoreError>;
}

/// Key and tenant management, used by the CLI against either host's store.
#[async_trait]
pub trait KeyAdmin: ApiKeys + TenantSettings + TopicAllowList {
    /// Stores `key` (issued by [`crate::auth::issue_key`] or the documented development key)
    /// for `tenant`, creating the tenant if needed.
    async fn store_key(&self, tenant: &str, name: &str, key: &IssuedKey) -> Result<(), StoreError>;
    /// Issues and stores a new key. Its plain-text key and secret are only in the return value.
    async fn create_key(&self, tenant: &str, name: &str) -> Result<IssuedKey, StoreError> {
        let key = crate::auth::issue_key();
        self.store_key(tenant, name, &key).await?;
        Ok(key)
    }
    async fn list_keys(&self, tenant: &str) -> Result<Vec<KeySummary>, StoreError>;
    async fn revoke_key(&self, tenant: &str, key_id: &str) -> Result<(), StoreError>;
    /// Issues a new webhook secret; the old one keeps verifying until [`Self::retire_secret`].
    async fn rotate_secret(&self, tenant: &str, key_id: &str) -> Result<String, StoreError>;
    /// Ends a rotation: only the current secret verifies from now on.
    async fn retire_secret(&self, tenant: &str, key_id: &str) -> Result<(), StoreError>;
    /// Registers the Sentry integration's Client Secret for `Sentry-Hook-Signature`.
    async fn set_sentry_secret(
        &self,
        tenant: &str,
        key_id: &str,
        secret: &str,
    ) -> Result<(), StoreError>;
    /// Replaces the tenant's agent table overrides (empty = the default table of docs/contract.md).
    async fn set_agent_overrides(
        &self,
        tenant: &str,
        overrides: &AgentOverrides,
    ) -> Result<(), StoreError>;
    /// The SNS topics on the tenant's allow-list, sorted.
    async fn allowed_topics(&self, tenant: &str) -> Result<Vec<String>, StoreError>;
    /// Adds (`allow`) or removes an SNS topic on the tenant's allow-list.
    async fn allow_topic(
        &self,
        tenant: &str,
        topic_arn: &str,
        allow: bool,
    ) -> Result<(), StoreError>;
}

/// Where an SNS subscription to a tenant's endpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionState {
    Pending,
    Confirmed,
    Unsubscribed,
}

impl SubscriptionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionState::Pending => "pending",
            SubscriptionState::Confirmed => "confirmed",
            SubscriptionState::Unsubscribed => "unsubscribed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => SubscriptionState::Pending,
            "confirmed" => SubscriptionState::Confirmed,
            "unsubscribed" => SubscriptionState::Unsubscribed,
            _ => return None,
        })
    }
}

/// One SNS topic's subscription to one tenant's endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub tenant_id: String,
    pub topic_arn: String,
    pub state: SubscriptionState,
    pub subscription_arn: Option<String>,
    pub updated_at: String,
}

/// The record of SNS subscriptions per tenant.
#[async_trait]
pub trait Subscriptions: Send + Sync {
    async fn record(&self, subscription: &Subscription) -> Result<(), StoreError>;
    async fn list(&self, tenant_id: &str) -> Result<Vec<Subscription>, StoreError>;
}

/// Confirms an SNS subscription whose SubscriptionConfirmation has been verified.
#[async_trait]
pub trait SubscriptionConfirmer: Send + Sync {
    /// Returns the subscription ARN when the confirmation reports one.
    async fn confirm(
        &self,
        topic_arn: &str,
        token: &str,
        subscribe_url: &reqwest::Url,
    ) -> Result<Option<String>, String>;
}

/// A signed-in console session, as the console reads it back. The session's own id is only known
/// to the browser; stores keep its SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    pub tenant_id: String,
    /// Sent back with every state-changing request (form field or `X-CSRF-Token` header).
    pub csrf_token: String,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// Unix milliseconds of the last request that refreshed it (at most once a minute).
    pub last_seen_ms: i64,
}

/// One-time console sign-in links and the sessions they are exchanged for. Links and sessions
/// are stored by the SHA-256 digest of their secret; expiry is enforced by the console, and the
/// stores also drop expired rows (SQLite on write, DynamoDB by TTL).
#[async_trait]
pub trait ConsoleSessions: Send + Sync {
    /// Records a sign-in link for `tenant`, usable once until `expires_at_ms`.
    async fn create_link(
        &self,
        tenant: &str,
        token_hash: &str,
        expires_at_ms: i64,
    ) -> Result<(), StoreError>;
    /// Uses up the link: its tenant the first time before expiry, `None` ever after. Atomic: two
    /// concurrent redemptions of one link never both succeed.
    async fn redeem_link(
        &self,
        token_hash: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError>;
    /// Stores a new session; the store may forget it after `expires_at_ms`.
    async fn create_session(
        &self,
        session_hash: &str,
        session: &ConsoleSession,
        expires_at_ms: i64,
    ) -> Result<(), StoreError>;
    /// The session, if it was created and not ended or revoked (expiry is the caller's check).
    async fn session(&self, session_hash: &str) -> Result<Option<ConsoleSession>, StoreError>;
    /// Moves the session's idle clock to `now_ms`.
    async fn touch(&self, session_hash: &str, now_ms: i64) -> Result<(), StoreError>;
    /// Signs one session out.
    async fn end_session(&self, session_hash: &str) -> Result<(), StoreError>;
    /// Signs every session of `tenant` out (`causeflow sessions revoke`); returns how many.
    async fn revoke_tenant(&self, tenant: &str) -> Result<usize, StoreError>;
}

/// An agent task of an incident and where its delivery stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    pub task_id: String,
    pub agent: String,
    /// `investigate` or `cancel`.
    pub kind: String,
    /// `queued` (recorded, not yet delivered), `retrying` (a delivery failed and will be
    /// retried), `delivered`, `publishing` or `published` (handed to the agent-dispatch topic,
    /// which delivers to the agents' queues).
    pub state: String,
    /// Delivery attempts so far, where the host counts them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// The agent tasks recorded for an incident.
#[async_trait]
pub trait TaskLog: Send + Sync {
    async fn tasks(
        &self,
        tenant_id: &str,
        incident_id: &str,
    ) -> Result<Vec<TaskRecord>, StoreError>;
}
