//! The console's HTML pages and their forms. Each handler checks the session (and, for a form,
//! its CSRF token and origin) before it reads or changes anything.

use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use tracing::warn;

use super::session::{self, Denied};
use super::views::*;
use super::{assets, send_test_alert, ConsoleState, LiveMode};
use crate::error::StoreError;
use crate::model::{IncidentStatus, Provider, Severity};
use crate::policy::{default_agents, valid_agent_name, AgentOverrides};
use crate::ports::{ConsoleSession, IncidentQuery, KeySummary};

type St = State<Arc<ConsoleState>>;

/// Rows per page of the Incidents table.
const PAGE_ROWS: usize = 50;
/// How often the event stream looks for changes, and how long one stream lives before the
/// browser reconnects (bounding what one open page holds on the server).
const STREAM_CHECK: Duration = Duration::from_millis(500);
const STREAM_LIFETIME: Duration = Duration::from_secs(300);

fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            warn!(error = %e, "console template failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

fn message(status: StatusCode, title: &str, message: &str, command: Option<String>) -> Response {
    let page = MessagePage {
        css: assets::css_path(),
        js: assets::js_path(),
        title: title.into(),
        message: message.into(),
        token: None,
        command,
    };
    (status, render(&page)).into_response()
}

fn sign_in_help(status: StatusCode, title: &str, why: &str) -> Response {
    message(
        status,
        title,
        &format!(
            "{why} Console access comes from a one-time sign-in link, which an operator prints \
             with the command below (an ingest API key never opens the console)."
        ),
        Some("causeflow console-link --tenant <tenant>   # add --aws for a deployed stack".into()),
    )
}

fn not_found() -> Response {
    message(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such page for this tenant.",
        None,
    )
}

fn unavailable(e: StoreError) -> Response {
    warn!(error = %e, "console store call failed");
    message(
        StatusCode::SERVICE_UNAVAILABLE,
        "Temporarily unavailable",
        "The store did not answer. Nothing was changed; try again in a moment.",
        None,
    )
}

/// The session of a page request for `tenant`, or the page to answer instead.
async fn guard(
    st: &ConsoleState,
    headers: &HeaderMap,
    tenant: &str,
) -> Result<(String, ConsoleSession), Response> {
    guard_with(st, headers, tenant, false).await
}

/// [`guard`] for the page's own background requests (live updates), which do not count as use.
async fn guard_with(
    st: &ConsoleState,
    headers: &HeaderMap,
    tenant: &str,
    background: bool,
) -> Result<(String, ConsoleSession), Response> {
    match session::current_with(st.sessions.as_ref(), headers, Some(tenant), background).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(Denied::SignedOut)) => Err(sign_in_help(
            StatusCode::UNAUTHORIZED,
            "Sign in",
            "You are not signed in, or your session ended.",
        )),
        Ok(Err(Denied::OtherTenant)) => Err(not_found()),
        Err(e) => Err(unavailable(e)),
    }
}

/// [`guard`] for a form post: also the origin and the CSRF token.
async fn guard_form(
    st: &ConsoleState,
    headers: &HeaderMap,
    tenant: &str,
    csrf: Option<&str>,
) -> Result<ConsoleSession, Response> {
    let (_, s) = guard(st, headers, tenant).await?;
    if !session::same_origin(headers, st.config.public_url.as_deref())
        || !session::csrf_ok(csrf, &s)
    {
        return Err(message(
            StatusCode::FORBIDDEN,
            "Request refused",
            "This form was not sent from this console page (its CSRF token or origin did not \
             match). Reload the page and try again.",
            None,
        ));
    }
    Ok(s)
}

/// A form's CSRF field.
trait CsrfField {
    fn csrf(&self) -> Option<&str>;
}

macro_rules! csrf_field {
    ($($t:ty),*) => {$(
        impl CsrfField for $t {
            fn csrf(&self) -> Option<&str> {
                self.csrf.as_deref()
            }
        }
    )*};
}
csrf_field!(CsrfForm, NameForm, TopicForm);

/// The session and the fields of a posted form, once its CSRF token and origin check out; the
/// fields are `None` when the body was not a form of that shape.
async fn posted<T: CsrfField>(
    st: &ConsoleState,
    headers: &HeaderMap,
    tenant: &str,
    form: Result<Form<T>, FormRejection>,
) -> Result<(ConsoleSession, Option<T>), Response> {
    let f = form.ok().map(|Form(f)| f);
    let s = guard_form(st, headers, tenant, f.as_ref().and_then(|f| f.csrf())).await?;
    Ok((s, f))
}

fn layout(st: &ConsoleState, s: &ConsoleSession, nav: &'static str, title: &str) -> Layout {
    let _ = st;
    Layout {
        tenant: s.tenant_id.clone(),
        csrf: s.csrf_token.clone(),
        css: assets::css_path(),
        js: assets::js_path(),
        nav,
        title: title.into(),
    }
}

/// Where senders reach this service: `--public-url`, else this request's own origin.
pub(super) fn base_url(st: &ConsoleState, headers: &HeaderMap) -> String {
    if let Some(u) = &st.config.public_url {
        return u.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = if session::https(headers) {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

/// `GET /console`: the signed-in tenant's incidents, or how to sign in.
pub async fn home(State(st): St, headers: HeaderMap) -> Response {
    match session::current(st.sessions.as_ref(), &headers, None).await {
        Ok(Ok((_, s))) => {
            Redirect::to(&format!("/console/t/{}/incidents", s.tenant_id)).into_response()
        }
        Ok(Err(_)) => sign_in_help(
            StatusCode::UNAUTHORIZED,
            "Sign in",
            "You are not signed in.",
        ),
        Err(e) => unavailable(e),
    }
}

#[derive(Deserialize)]
pub struct TokenParam {
    token: Option<String>,
}

/// `GET /console/signin?token=`: a button, not the sign-in itself, so link scanners and
/// previews that fetch the URL do not use the link up.
pub async fn sign_in_form(q: Result<Query<TokenParam>, QueryRejection>) -> Response {
    let token = q.ok().and_then(|Query(p)| p.token).unwrap_or_default();
    if token.is_empty() || token.len() > 128 {
        return sign_in_help(
            StatusCode::BAD_REQUEST,
            "Sign in",
            "This sign-in link is incomplete.",
        );
    }
    render(&MessagePage {
        css: assets::css_path(),
        js: assets::js_path(),
        title: "Sign in to CauseFlow".into(),
        message: "This one-time link signs this browser in to the console.".into(),
        token: Some(token),
        command: None,
    })
}

/// `POST /console/signin`: uses the link up and starts a session.
pub async fn sign_in(
    State(st): St,
    headers: HeaderMap,
    form: Result<Form<TokenParam>, FormRejection>,
) -> Response {
    if !session::same_origin(&headers, st.config.public_url.as_deref()) {
        return message(
            StatusCode::FORBIDDEN,
            "Request refused",
            "Sign-in must be sent from the sign-in page itself.",
            None,
        );
    }
    let token = form.ok().and_then(|Form(p)| p.token).unwrap_or_default();
    let tenant = match session::redeem(st.sessions.as_ref(), &token).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return sign_in_help(
                StatusCode::UNAUTHORIZED,
                "This sign-in link does not work",
                "The link was used already or has expired.",
            )
        }
        Err(e) => return unavailable(e),
    };
    // A session this browser already had ends: one browser, one session.
    if let Ok(Ok((old, _))) = session::current(st.sessions.as_ref(), &headers, None).await {
        if let Err(e) = st.sessions.end_session(&old).await {
            return unavailable(e);
        }
    }
    match session::start(st.sessions.as_ref(), &tenant).await {
        Ok((secret, _)) => {
            let mut r = Redirect::to(&format!("/console/t/{tenant}/incidents")).into_response();
            r.headers_mut().insert(
                header::SET_COOKIE,
                session::cookie(&secret, session::https(&headers)),
            );
            r
        }
        Err(e) => unavailable(e),
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(rename = "_csrf")]
    csrf: Option<String>,
}

/// `POST /console/signout`.
pub async fn sign_out(
    State(st): St,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let csrf = form.ok().and_then(|Form(f)| f.csrf);
    if let Ok(Ok((hash, s))) = session::current(st.sessions.as_ref(), &headers, None).await {
        if !session::same_origin(&headers, st.config.public_url.as_deref())
            || !session::csrf_ok(csrf.as_deref(), &s)
        {
            return message(
                StatusCode::FORBIDDEN,
                "Request refused",
                "Sign out from the console's own button.",
                None,
            );
        }
        if let Err(e) = st.sessions.end_session(&hash).await {
            return unavailable(e);
        }
    }
    let mut r = sign_in_help(StatusCode::OK, "Signed out", "You are signed out.");
    r.headers_mut().insert(
        header::SET_COOKIE,
        session::clear_cookie(session::https(&headers)),
    );
    r
}

#[derive(Deserialize, Default)]
pub struct ListParams {
    status: Option<String>,
    severity: Option<String>,
    provider: Option<String>,
    q: Option<String>,
    cursor: Option<String>,
    fragment: Option<String>,
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl ListParams {
    fn query(&self) -> Result<IncidentQuery, String> {
        let status = match nonempty(&self.status) {
            None => None,
            Some(s) => Some(IncidentStatus::parse(s).ok_or(format!("status {s:?}"))?),
        };
        let severity = match nonempty(&self.severity) {
            None => None,
            Some(s) => Some(Severity::from_label(s).ok_or(format!("severity {s:?}"))?),
        };
        let provider = match nonempty(&self.provider) {
            None => None,
            Some(p) => Some(
                p.parse::<Provider>()
                    .map_err(|_| format!("provider {p:?}"))?,
            ),
        };
        let text = nonempty(&self.q).map(|t| t.chars().take(200).collect());
        Ok(IncidentQuery {
            status,
            severity,
            provider,
            text,
            limit: PAGE_ROWS,
            cursor: nonempty(&self.cursor).map(|c| c.chars().take(128).collect()),
        })
    }

    /// The query string of these filters (without cursor), for links that keep them.
    fn filter_string(&self) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("status", &self.status),
            ("severity", &self.severity),
            ("provider", &self.provider),
            ("q", &self.q),
        ] {
            if let Some(v) = nonempty(v) {
                q.append_pair(k, v);
            }
        }
        q.finish()
    }
}

/// `GET /console/t/{t}/incidents` (with `fragment=rows`: the table rows alone).
pub async fn incidents(
    State(st): St,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let Query(p) = params.unwrap_or_default();
    let background = p.fragment.as_deref() == Some("rows");
    let (_, s) = match guard_with(&st, &headers, &tenant, background).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let query = match p.query() {
        Ok(q) => q,
        Err(what) => {
            return message(
                StatusCode::BAD_REQUEST,
                "Unknown filter",
                &format!("The filter {what} is not one of the choices; pick one from the form."),
                None,
            )
        }
    };
    let page = match st.incidents.list(&tenant, &query).await {
        Ok(p) => p,
        Err(e) => return unavailable(e),
    };
    let rows = Rows {
        rows: page
            .incidents
            .iter()
            .map(|i| Row::new(&tenant, i))
            .collect(),
    };
    if p.fragment.as_deref() == Some("rows") {
        return render(&rows);
    }
    let base = format!("/console/t/{tenant}/incidents");
    let filters = p.filter_string();
    let with = |extra: &str| {
        let q = [filters.as_str(), extra]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("&");
        if q.is_empty() {
            base.clone()
        } else {
            format!("{base}?{q}")
        }
    };
    let cursor = query.cursor.clone();
    let page_view = IncidentsPage {
        l: layout(&st, &s, "incidents", "Incidents"),
        rows,
        statuses: choices(
            &["open", "acknowledged", "resolved"],
            query.status.map(|s| s.as_str()),
        ),
        severities: choices(
            &["critical", "high", "medium", "low", "info"],
            query.severity.map(|s| s.as_str()),
        ),
        providers: choices(
            &Provider::ALL.map(|p| p.as_str()),
            query.provider.map(|p| p.as_str()),
        ),
        q: query.text.clone().unwrap_or_default(),
        fragment: with(&match &cursor {
            Some(c) => format!("cursor={}&fragment=rows", urlencode(c)),
            None => "fragment=rows".into(),
        }),
        // The newest page is the one that changes; older pages poll too, but need no stream.
        stream: (st.config.live == LiveMode::Stream)
            .then(|| format!("/console/t/{tenant}/incidents/stream")),
        next: page
            .next_cursor
            .as_ref()
            .map(|c| with(&format!("cursor={}", urlencode(c)))),
        first: cursor.map(|_| with("")),
    };
    render(&page_view)
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A fingerprint of the newest incidents: it changes when one is added, changes state or
/// counts a duplicate.
async fn newest_digest(st: &ConsoleState, tenant: &str) -> Result<String, StoreError> {
    let page = st
        .incidents
        .list(
            tenant,
            &IncidentQuery {
                limit: PAGE_ROWS,
                ..Default::default()
            },
        )
        .await?;
    let mut d = String::new();
    for i in &page.incidents {
        d.push_str(&i.incident_id);
        d.push_str(i.status.as_str());
        d.push_str(&i.last_seen);
        d.push_str(&i.duplicate_count.unwrap_or(0).to_string());
    }
    Ok(d)
}

/// `GET /console/t/{t}/incidents/stream`: server-sent `changed` events for the Incidents page.
/// Each stream lives at most [`STREAM_LIFETIME`] (the browser then reconnects), ends when the
/// server shuts down, and a tenant holds at most [`super::MAX_STREAMS_PER_TENANT`] (beyond
/// that the answer is 429 and the page polls instead).
pub async fn incident_stream(
    State(st): St,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard_with(&st, &headers, &tenant, true).await {
        return r;
    }
    if st.config.live != LiveMode::Stream {
        return not_found();
    }
    let Some(slot) = super::open_stream(&st, &tenant) else {
        return message(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many live pages",
            "This tenant has too many live Incidents pages open; this one checks every second instead.",
            None,
        );
    };
    let start = tokio::time::Instant::now();
    let initial = newest_digest(&st, &tenant).await.unwrap_or_default();
    let closing = st.runtime.closing();
    let state = (st, tenant, initial, start, closing, slot);
    let stream = futures_util::stream::unfold(
        state,
        |(st, tenant, last, start, mut closing, slot)| async move {
            let mut tick = tokio::time::interval(STREAM_CHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = closing.wait_for(|c| *c) => return None,
                }
                if start.elapsed() > STREAM_LIFETIME {
                    return None;
                }
                match newest_digest(&st, &tenant).await {
                    Ok(d) if d != last => {
                        let ev = SseEvent::default().event("changed").data("incidents");
                        let next = (st, tenant, d, start, closing, slot);
                        return Some((Ok::<_, std::convert::Infallible>(ev), next));
                    }
                    Ok(_) => {}
                    // A store hiccup ends this stream; the browser reconnects.
                    Err(_) => return None,
                }
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}

/// `GET /console/t/{t}/incidents/{id}`.
pub async fn incident(
    State(st): St,
    Path((tenant, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (_, s) = match guard(&st, &headers, &tenant).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let i = match st.incidents.get(&tenant, &id).await {
        Ok(Some(i)) => i,
        Ok(None) => return not_found(),
        Err(e) => return unavailable(e),
    };
    let tasks = match st.tasks.tasks(&tenant, &id).await {
        Ok(t) => t,
        Err(e) => return unavailable(e),
    };
    let mut history = vec![Event {
        at: Time::new(&i.first_seen),
        what: format!("firing: incident opened (severity {})", i.severity.as_str()),
    }];
    if let Some(n) = i.duplicate_count.filter(|n| *n > 0) {
        history.push(Event {
            at: Time::new(&i.last_seen),
            what: format!(
                "{n} duplicate firing{} answered 409 (the last at this time)",
                if n == 1 { "" } else { "s" }
            ),
        });
    }
    if let Some(at) = &i.acknowledged_at {
        history.push(Event {
            at: Time::new(at),
            what: "acknowledged".into(),
        });
    }
    if let Some(at) = &i.resolved_at {
        history.push(Event {
            at: Time::new(at),
            what: "resolved".into(),
        });
    }
    history.sort_by(|a, b| a.at.iso.cmp(&b.at.iso));
    let page = IncidentPage {
        l: layout(&st, &s, "incidents", &i.title),
        row: Row::new(&tenant, &i),
        links: i.links.iter().map(|l| Link::new(l)).collect(),
        history,
        tasks,
        i,
    };
    render(&page)
}

fn key_rows(keys: Vec<KeySummary>) -> Vec<KeyRow> {
    keys.into_iter()
        .map(|k| {
            let created = Time::new(&k.created_at);
            let last_used = k.last_used_at.as_deref().map(Time::new);
            let state = match (k.revoked, k.rotating) {
                (true, _) => "revoked",
                (false, true) => "active, old secret still verifies",
                (false, false) => "active",
            };
            KeyRow {
                k,
                created,
                last_used,
                state,
            }
        })
        .collect()
}

async fn keys_page(
    st: &ConsoleState,
    s: &ConsoleSession,
    shown: Option<Shown>,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let keys = match super::keys_with_usage(st, &s.tenant_id).await {
        Ok(k) => k,
        Err(e) => return unavailable(e),
    };
    let forget = shown.is_some();
    let mut r = render(&KeysPage {
        l: layout(st, s, "keys", "API keys"),
        keys: key_rows(keys),
        shown,
        notice,
        error,
    });
    if forget {
        r.headers_mut()
            .insert(header::CACHE_CONTROL, "no-store".parse().expect("static"));
    }
    r
}

/// `GET /console/t/{t}/keys`.
pub async fn keys(State(st): St, Path(tenant): Path<String>, headers: HeaderMap) -> Response {
    match guard(&st, &headers, &tenant).await {
        Ok((_, s)) => keys_page(&st, &s, None, None, None).await,
        Err(r) => r,
    }
}

#[derive(Deserialize)]
pub struct NameForm {
    #[serde(rename = "_csrf")]
    csrf: Option<String>,
    name: Option<String>,
    secret: Option<String>,
}

/// `POST /console/t/{t}/keys`: the new key and secret are in this answer only.
pub async fn create_key(
    State(st): St,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    form: Result<Form<NameForm>, FormRejection>,
) -> Response {
    let (s, f) = match posted(&st, &headers, &tenant, form).await {
        Ok(sf) => sf,
        Err(r) => return r,
    };
    let name = f.as_ref().and_then(|f| nonempty(&f.name)).unwrap_or("");
    if let Err(e) = super::api::check_key_name(name) {
        return keys_page(&st, &s, None, None, Some(e)).await;
    }
    match super::api::room_for_key(&st, &tenant).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return keys_page(&st, &s, None, None, Some(e)).await,
        Err(e) => return unavailable(e),
    }
    match st.directory.create_key(&tenant, name).await {
        Ok(k) => {
            let shown = Shown {
                heading: format!("Key {name:?} created"),
                key_id: k.key_id,
                api_key: Some(k.api_key),
                webhook_secret: k.webhook_secret,
            };
            keys_page(&st, &s, Some(shown), None, None).await
        }
        Err(StoreError::Invalid(e)) => keys_page(&st, &s, None, None, Some(e)).await,
        Err(e) => unavailable(e),
    }
}

/// `POST /console/t/{t}/keys/{key}/{revoke|rotate|retire|sentry}`.
pub async fn key_action(
    State(st): St,
    Path((tenant, key, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    form: Result<Form<NameForm>, FormRejection>,
) -> Response {
    let (s, f) = match posted(&st, &headers, &tenant, form).await {
        Ok(sf) => sf,
        Err(r) => return r,
    };
    // Another tenant's key id answers as a key that does not exist.
    match st.directory.list_keys(&tenant).await {
        Ok(keys) if keys.iter().any(|k| k.key_id == key) => {}
        Ok(_) => return not_found(),
        Err(e) => return unavailable(e),
    }
    let d = &st.directory;
    let result = match action.as_str() {
        "revoke" => d.revoke_key(&tenant, &key).await.map(|_| {
            (
                None,
                format!("Key {key} revoked: webhooks sent with it now get 401."),
            )
        }),
        "rotate" => d.rotate_secret(&tenant, &key).await.map(|secret| {
            (
                Some(Shown {
                    heading: format!("New webhook secret for {key}"),
                    key_id: key.clone(),
                    api_key: None,
                    webhook_secret: secret,
                }),
                "The old secret keeps verifying until you retire it.".to_owned(),
            )
        }),
        "retire" => d.retire_secret(&tenant, &key).await.map(|_| {
            (
                None,
                format!("The old webhook secret of {key} no longer verifies."),
            )
        }),
        "sentry" => {
            let secret = f.as_ref().and_then(|f| f.secret.as_deref()).unwrap_or("");
            d.set_sentry_secret(&tenant, &key, secret)
                .await
                .map(|_| (None, format!("Sentry client secret saved for {key}.")))
        }
        _ => return not_found(),
    };
    match result {
        Ok((shown, notice)) => keys_page(&st, &s, shown, Some(notice), None).await,
        Err(StoreError::Invalid(e)) | Err(StoreError::NotFound(e)) => {
            keys_page(&st, &s, None, None, Some(e)).await
        }
        Err(e) => unavailable(e),
    }
}

/// How each provider authenticates, in one line.
fn auth_line(p: Provider) -> &'static str {
    match p {
        Provider::Datadog => "API key header",
        Provider::Grafana | Provider::Sentry | Provider::Generic => "API key and HMAC signature",
        Provider::Cloudwatch => {
            "SNS signature with credentials, an allow-listed topic, or the forwarder"
        }
        Provider::Alertmanager => "API key as a Bearer token",
        Provider::Pagerduty => "API key as the routing key",
    }
}

/// `GET /console/t/{t}/integrations`.
pub async fn integrations(
    State(st): St,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (_, s) = match guard(&st, &headers, &tenant).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    render(&IntegrationsPage {
        l: layout(&st, &s, "integrations", "Integrations"),
        providers: Provider::ALL
            .iter()
            .map(|p| ProviderEntry {
                name: p.as_str(),
                label: label(*p),
                auth: auth_line(*p),
            })
            .collect(),
    })
}

#[derive(Deserialize)]
pub struct SentParam {
    sent: Option<String>,
}

/// `GET /console/t/{t}/integrations/{provider}`.
pub async fn integration(
    State(st): St,
    Path((tenant, provider)): Path<(String, String)>,
    headers: HeaderMap,
    q: Result<Query<SentParam>, QueryRejection>,
) -> Response {
    let (_, s) = match guard(&st, &headers, &tenant).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(p) = provider.parse::<Provider>() else {
        return not_found();
    };
    let sent = q
        .ok()
        .and_then(|Query(q)| q.sent)
        .filter(|id| id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    integration_page(&st, &s, &headers, p, sent, None).await
}

async fn integration_page(
    st: &ConsoleState,
    s: &ConsoleSession,
    headers: &HeaderMap,
    p: Provider,
    sent: Option<String>,
    error: Option<String>,
) -> Response {
    let tenant = &s.tenant_id;
    let url = format!(
        "{}/v1/webhooks/{tenant}/{}",
        base_url(st, headers),
        p.as_str()
    );
    let cloudwatch = if p == Provider::Cloudwatch {
        let topics = match super::api::topics_of(st, tenant).await {
            Ok(t) => t,
            Err(e) => return unavailable(e),
        };
        let subscriptions = match st.subscriptions.list(tenant).await {
            Ok(s) => s,
            Err(e) => return unavailable(e),
        };
        Some(CloudWatch {
            topics: topics.into_iter().map(|arn| TopicRow { arn }).collect(),
            subscriptions,
        })
    } else {
        None
    };
    let guide = super::guide::guide(p, &url);
    render(&IntegrationPage {
        l: layout(st, s, "integrations", label(p)),
        provider: p.as_str(),
        label: label(p),
        headers: guide.headers,
        steps: guide.steps,
        curl: guide.curl,
        url,
        sent,
        cloudwatch,
        error,
    })
}

/// `POST /console/t/{t}/integrations/{provider}/test` (without JavaScript; the page's script
/// uses the JSON API instead).
pub async fn send_test(
    State(st): St,
    Path((tenant, provider)): Path<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if let Err(r) = posted(&st, &headers, &tenant, form).await {
        return r;
    }
    let Ok(p) = provider.parse::<Provider>() else {
        return not_found();
    };
    if let Err(wait) = st.runtime.test_alerts.check(&tenant, 1) {
        return message(
            StatusCode::TOO_MANY_REQUESTS,
            "Slow down",
            &format!(
                "Test alerts are limited to one a second; try again in {} s.",
                wait.as_secs().max(1)
            ),
            None,
        );
    }
    match send_test_alert(&st, &tenant, p).await {
        Ok(r) => match r.incident_id {
            Some(id) => Redirect::to(&format!(
                "/console/t/{tenant}/integrations/{}?sent={id}",
                p.as_str()
            ))
            .into_response(),
            None => not_found(),
        },
        Err(e) => unavailable(e),
    }
}

#[derive(Deserialize)]
pub struct TopicForm {
    #[serde(rename = "_csrf")]
    csrf: Option<String>,
    topic: Option<String>,
    action: Option<String>,
}

/// `POST /console/t/{t}/integrations/cloudwatch/topics`: allow or remove a topic.
pub async fn topic_action(
    State(st): St,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    form: Result<Form<TopicForm>, FormRejection>,
) -> Response {
    let (s, f) = match posted(&st, &headers, &tenant, form).await {
        Ok(sf) => sf,
        Err(r) => return r,
    };
    let topic = f.as_ref().and_then(|f| nonempty(&f.topic)).unwrap_or("");
    let allow = f.as_ref().and_then(|f| f.action.as_deref()) != Some("remove");
    if allow {
        match super::api::room_for_topic(&st, &tenant, topic).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return integration_page(&st, &s, &headers, Provider::Cloudwatch, None, Some(e))
                    .await
            }
            Err(e) => return unavailable(e),
        }
    }
    let error = match st.directory.allow_topic(&tenant, topic, allow).await {
        Ok(()) => None,
        Err(StoreError::Invalid(e)) => Some(e),
        Err(e) => return unavailable(e),
    };
    integration_page(&st, &s, &headers, Provider::Cloudwatch, None, error).await
}

const SEVERITIES: [Severity; 5] = [
    Severity::Critical,
    Severity::High,
    Severity::Medium,
    Severity::Low,
    Severity::Info,
];

async fn settings_page(
    st: &ConsoleState,
    s: &ConsoleSession,
    headers: &HeaderMap,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let overrides = match st.directory.agent_overrides(&s.tenant_id).await {
        Ok(o) => o,
        Err(e) => return unavailable(e),
    };
    let rows = SEVERITIES
        .iter()
        .map(|sev| {
            let d = default_agents(Provider::Generic, *sev);
            AgentRow {
                severity: sev.as_str(),
                defaults: if d.is_empty() {
                    "none".into()
                } else {
                    format!("{} (+ provider extras)", d.join(", "))
                },
                current: match overrides.0.get(sev) {
                    Some(a) if a.is_empty() => "none".into(),
                    Some(a) => a.join(", "),
                    None => String::new(),
                },
                overridden: overrides.0.contains_key(sev),
            }
        })
        .collect();
    let rl = st.config.rate_limit;
    let rate = if rl.per_sec <= 0.0 {
        "off".to_owned()
    } else {
        format!(
            "{} requests/s per tenant, bursts of {} (429 with Retry-After above it)",
            rl.per_sec, rl.burst
        )
    };
    render(&SettingsPage {
        l: layout(st, s, "settings", "Settings"),
        public_url: base_url(st, headers),
        rate,
        rows,
        notice,
        error,
    })
}

/// `GET /console/t/{t}/settings`.
pub async fn settings(State(st): St, Path(tenant): Path<String>, headers: HeaderMap) -> Response {
    match guard(&st, &headers, &tenant).await {
        Ok((_, s)) => settings_page(&st, &s, &headers, None, None).await,
        Err(r) => r,
    }
}

/// Parses the agents form: per severity, empty = default, `none` = no agents, else a list.
pub(super) fn parse_agents(
    fields: &std::collections::HashMap<String, String>,
) -> Result<AgentOverrides, String> {
    let mut o = AgentOverrides::default();
    for sev in SEVERITIES {
        let Some(v) = fields.get(sev.as_str()).map(|v| v.trim()) else {
            continue;
        };
        if v.is_empty() {
            continue;
        }
        if v.eq_ignore_ascii_case("none") {
            o.0.insert(sev, Vec::new());
            continue;
        }
        let agents: Vec<String> = v
            .split(',')
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        if agents.len() > 16 {
            return Err(format!("{}: at most 16 agents", sev.as_str()));
        }
        if let Some(bad) = agents.iter().find(|a| !valid_agent_name(a)) {
            return Err(format!(
                "{}: agent name {bad:?} is not valid; use lower-case letters, digits, '-' and '_' (up to 64)",
                sev.as_str()
            ));
        }
        o.0.insert(sev, agents);
    }
    Ok(o)
}

/// `POST /console/t/{t}/settings/agents`.
pub async fn save_agents(
    State(st): St,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    form: Result<Form<std::collections::HashMap<String, String>>, FormRejection>,
) -> Response {
    let fields = form.map(|Form(f)| f).unwrap_or_default();
    let s = match guard_form(
        &st,
        &headers,
        &tenant,
        fields.get("_csrf").map(String::as_str),
    )
    .await
    {
        Ok(s) => s,
        Err(r) => return r,
    };
    match parse_agents(&fields) {
        Ok(o) => match st.directory.set_agent_overrides(&tenant, &o).await {
            Ok(()) => settings_page(&st, &s, &headers, Some("Agents saved.".into()), None).await,
            Err(StoreError::Invalid(e)) => settings_page(&st, &s, &headers, None, Some(e)).await,
            Err(e) => unavailable(e),
        },
        Err(e) => settings_page(&st, &s, &headers, None, Some(e)).await,
    }
}
