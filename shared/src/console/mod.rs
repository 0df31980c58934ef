//! The console: server-rendered pages (Incidents, Integrations, API keys, Settings) and the JSON
//! management API under them, on both hosts. Access is by one-time sign-in link exchanged for a
//! server-side session (never by an ingest API key); every state change carries the session's
//! CSRF token. See docs/console.md.

mod api;
mod assets;
mod guide;
mod pages;
mod session;
mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;

use crate::error::StoreError;
use crate::http::RateLimit;
use crate::model::{Alert, AlertResult, AlertStatus, Provider, Severity};
use crate::ports::{
    AlertLedger, ConsoleSessions, IncidentStore, KeyAdmin, KeyUsage, Subscriptions, TaskLog,
};

pub use session::{create_sign_in_link, SESSION_ABSOLUTE, SESSION_IDLE};

/// How the Incidents page learns about changes without a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveMode {
    /// Server-sent events: the host keeps a response open (`causeflow serve`).
    Stream,
    /// The page polls: the host answers each request and closes it (API Gateway and Lambda).
    Poll,
}

/// Which host serves the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    Embedded,
    Aws,
}

/// Settings the console shows or needs, fixed for the process.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// The URL senders reach this service at (`--public-url`, or the stack's API URL); without
    /// one, webhook URLs are built from the request's `Host`.
    pub public_url: Option<String>,
    pub live: LiveMode,
    pub rate_limit: RateLimit,
    pub host: HostKind,
}

/// Everything the console's handlers need, built once per process.
pub struct ConsoleState {
    pub directory: Arc<dyn KeyAdmin>,
    pub incidents: Arc<dyn IncidentStore>,
    pub ledger: Arc<dyn AlertLedger>,
    pub sessions: Arc<dyn ConsoleSessions>,
    pub subscriptions: Arc<dyn Subscriptions>,
    pub tasks: Arc<dyn TaskLog>,
    /// Keys' last use, where the host records it.
    pub usage: Option<Arc<dyn KeyUsage>>,
    pub config: ConsoleConfig,
    /// Per-process state: open event streams, the test-alert budget, shutdown.
    pub runtime: ConsoleRuntime,
}

/// Event streams a tenant may hold open at once; more are refused and those pages poll.
pub const MAX_STREAMS_PER_TENANT: usize = 20;
/// Keys a tenant may hold (revoked ones included); the console refuses to make more.
pub const MAX_KEYS_PER_TENANT: usize = 100;
/// Topics on a tenant's allow-list.
pub const MAX_TOPICS_PER_TENANT: usize = 100;

/// What the console keeps in memory for one process.
pub struct ConsoleRuntime {
    closing: tokio::sync::watch::Sender<bool>,
    /// Send test alert: 1 a second per tenant, bursts of 5; each makes an incident.
    pub(crate) test_alerts: crate::http::RateLimiter,
    streams: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl Default for ConsoleRuntime {
    fn default() -> Self {
        ConsoleRuntime {
            closing: tokio::sync::watch::Sender::new(false),
            test_alerts: crate::http::RateLimiter::new(RateLimit {
                per_sec: 1.0,
                burst: 5.0,
            }),
            streams: Default::default(),
        }
    }
}

impl ConsoleRuntime {
    /// Ends every open event stream (the server is shutting down).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    pub(crate) fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }
}

/// A slot for one more event stream of `tenant`, released when the returned guard drops.
pub(crate) fn open_stream(state: &Arc<ConsoleState>, tenant: &str) -> Option<StreamSlot> {
    {
        let mut m = state
            .runtime
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = m.entry(tenant.to_owned()).or_insert(0);
        if *n >= MAX_STREAMS_PER_TENANT {
            return None;
        }
        *n += 1;
    }
    Some(StreamSlot {
        state: state.clone(),
        tenant: tenant.to_owned(),
    })
}

/// One open event stream; dropping it frees the slot.
pub(crate) struct StreamSlot {
    state: Arc<ConsoleState>,
    tenant: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut m = self
            .state
            .runtime
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.tenant);
            }
        }
    }
}

/// The console's routes: pages under `/console`, the management API under `/v1/tenants/{t}/`.
/// Merged into the ingest router by `causeflow serve`; served alone by the console Lambda.
pub fn router(state: Arc<ConsoleState>) -> Router {
    Router::new()
        .route("/console", get(pages::home))
        .route("/console/", get(pages::home))
        .route(
            "/console/signin",
            get(pages::sign_in_form).post(pages::sign_in),
        )
        .route("/console/signout", post(pages::sign_out))
        .route("/console/assets/{name}", get(assets::serve))
        .route("/console/t/{tenant}/incidents", get(pages::incidents))
        .route(
            "/console/t/{tenant}/incidents/stream",
            get(pages::incident_stream),
        )
        .route(
            "/console/t/{tenant}/incidents/{incident}",
            get(pages::incident),
        )
        .route(
            "/console/t/{tenant}/keys",
            get(pages::keys).post(pages::create_key),
        )
        .route(
            "/console/t/{tenant}/keys/{key}/{action}",
            post(pages::key_action),
        )
        .route("/console/t/{tenant}/integrations", get(pages::integrations))
        .route(
            "/console/t/{tenant}/integrations/{provider}",
            get(pages::integration),
        )
        .route(
            "/console/t/{tenant}/integrations/{provider}/test",
            post(pages::send_test),
        )
        .route(
            "/console/t/{tenant}/integrations/cloudwatch/topics",
            post(pages::topic_action),
        )
        .route("/console/t/{tenant}/settings", get(pages::settings))
        .route(
            "/console/t/{tenant}/settings/agents",
            post(pages::save_agents),
        )
        .route(
            "/v1/tenants/{tenant}/keys",
            get(api::list_keys).post(api::create_key),
        )
        .route(
            "/v1/tenants/{tenant}/keys/{key}/revoke",
            post(api::revoke_key),
        )
        .route(
            "/v1/tenants/{tenant}/keys/{key}/rotate-secret",
            post(api::rotate_secret),
        )
        .route(
            "/v1/tenants/{tenant}/keys/{key}/retire-secret",
            post(api::retire_secret),
        )
        .route(
            "/v1/tenants/{tenant}/keys/{key}/sentry-secret",
            axum::routing::put(api::set_sentry_secret),
        )
        .route(
            "/v1/tenants/{tenant}/agents",
            get(api::get_agents).put(api::put_agents),
        )
        .route(
            "/v1/tenants/{tenant}/topics",
            get(api::list_topics)
                .post(api::add_topic)
                .delete(api::remove_topic),
        )
        .route(
            "/v1/tenants/{tenant}/subscriptions",
            get(api::list_subscriptions),
        )
        .route("/v1/tenants/{tenant}/test-alert", post(api::test_alert))
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::middleware::from_fn(crate::http::observe::observe))
        .with_state(state)
}

/// Headers on every console answer: a Content-Security-Policy that allows only this origin's own
/// script and style (no inline script, so injected markup cannot run), no framing, no referrer
/// to other sites (sign-in links carry a token; `no-referrer` would also make browsers send
/// `Origin: null` on our own forms), and pages never cached unless they say otherwise.
async fn security_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// Admits a test alert for `provider` through the same ledger (dedup, queue, triage) as every
/// webhook; triage records it as a test incident and dispatches nothing.
pub async fn send_test_alert(
    state: &ConsoleState,
    tenant: &str,
    provider: Provider,
) -> Result<AlertResult, StoreError> {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let mut alert = Alert {
        source_alert_id: format!("console-test-{id}"),
        status: AlertStatus::Firing,
        title: String::new(),
        title_truncated: false,
        message: Some(
            "Sent with Send test alert in the console. Test incidents dispatch no agents.".into(),
        ),
        severity: Severity::Info,
        service: None,
        environment: None,
        tags: [("source".to_owned(), "console".to_owned())].into(),
        links: Vec::new(),
        test: true,
        unsigned: false,
    };
    alert.set_title(&format!(
        "Test alert from the console ({})",
        provider.as_str()
    ));
    let mut results = state
        .ledger
        .admit(tenant, provider, &[alert], chrono::Utc::now())
        .await?;
    results
        .pop()
        .ok_or_else(|| StoreError::Unavailable("the ledger answered nothing".into()))
}

/// The tenant's keys with their last use filled in where the host records it.
pub(crate) async fn keys_with_usage(
    state: &ConsoleState,
    tenant: &str,
) -> Result<Vec<crate::ports::KeySummary>, StoreError> {
    let mut keys = state.directory.list_keys(tenant).await?;
    if let Some(usage) = &state.usage {
        let ids: Vec<String> = keys.iter().map(|k| k.key_id.clone()).collect();
        let used = usage.last_used(&ids).await?;
        for k in &mut keys {
            k.last_used_at = used
                .get(&k.key_id)
                .and_then(|ms| chrono::DateTime::<chrono::Utc>::from_timestamp_millis(*ms))
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
    }
    Ok(keys)
}

/// Longest a sign-in link may live (`console-link --ttl`).
pub const MAX_LINK_TTL: Duration = Duration::from_secs(24 * 3600);
