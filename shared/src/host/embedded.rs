//! `causeflow serve`: the HTTP router, a triage worker and the agent-task delivery loop over one
//! SQLite file. The CLI's `main` only parses flags and calls [`Embedded::open`] and
//! [`Embedded::run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::auth::IssuedKey;
use crate::console::{ConsoleConfig, ConsoleState, HostKind, LiveMode};
use crate::dedup::DedupConfig;
use crate::error::StoreError;
use crate::http::server::{self, ServerLimits};
use crate::http::{router, AppState, RateLimit, SnsSupport};
use crate::ports::KeyAdmin;
use crate::sns::{CertCache, HttpsGet, ReqwestGet, SubscribeUrlConfirmer};
use crate::sqlite::{
    Db, SqliteDirectory, SqliteDispatcher, SqliteIncidents, SqliteLedger, SqliteQueue,
    SqliteSessions, SqliteSubscriptions,
};
use crate::triage::Triage;

/// Queued alerts triaged per writer job ([`SqliteQueue::triage_batch`]): the batch's queue rows,
/// incidents and tasks share one transaction. SQS's own limit (10) does not apply here.
const TRIAGE_BATCH: usize = 64;
/// Least time between two readings of the queue for `/metrics`.
const QUEUE_READ_EVERY: Duration = Duration::from_secs(1);
/// Triage loops: while the writer runs one loop's batch, the other's waits queued behind it.
const TRIAGE_WORKERS: usize = 2;

/// Settings of the one-machine host.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    pub db_path: PathBuf,
    pub rate_limit: RateLimit,
    pub dedup: DedupConfig,
    /// Agent tasks are POSTed here when set (and always recorded in the database).
    pub agent_webhook: Option<String>,
    /// How long a claimed queue message stays hidden before it is redelivered, should its
    /// batch's triage job fail as a whole.
    pub visibility: Duration,
    /// First retry delay of a message whose triage failed; doubles with each receive.
    pub retry_base: Duration,
    /// SNS signing certificates to pre-seed (air-gapped installs): a directory mirroring the
    /// SigningCertURLs as `<host>/<path>.pem`, or a JSON file `{"<url>": "<PEM>"}`.
    pub sns_certs: Option<PathBuf>,
    /// Alerts one request may carry (413 `too_many_alerts` beyond).
    pub max_alerts: usize,
    /// Timeouts and the connection cap of the listener.
    pub limits: ServerLimits,
    /// Where senders and browsers reach this server (`--public-url`); `None`: the request's own
    /// host.
    pub public_url: Option<String>,
    /// Serve `/metrics` on this address only (`--metrics-addr`); `None`: on the main address.
    pub metrics_addr: Option<SocketAddr>,
}

impl EmbeddedConfig {
    pub fn new(db_path: impl Into<PathBuf>) -> Self {
        EmbeddedConfig {
            db_path: db_path.into(),
            rate_limit: RateLimit::default(),
            dedup: DedupConfig::default(),
            agent_webhook: None,
            visibility: Duration::from_secs(30),
            retry_base: Duration::from_secs(5),
            sns_certs: None,
            max_alerts: crate::http::DEFAULT_MAX_ALERTS,
            limits: ServerLimits::default(),
            public_url: None,
            metrics_addr: None,
        }
    }

    /// Refuses settings that cannot work, with a message that says what to use instead; checked
    /// before anything starts, so a bad flag never surfaces as a panic under load.
    pub fn validate(&self) -> Result<(), String> {
        self.rate_limit.validate()?;
        self.limits.validate()?;
        if !(1..=100_000).contains(&self.max_alerts) {
            return Err(format!(
                "--max-alerts {}: use 1 to 100000 alerts per request",
                self.max_alerts
            ));
        }
        let hours = self.dedup.ttl.as_secs() / 3600;
        if self.dedup.ttl.is_zero() || hours > 24 * 366 {
            return Err(format!(
                "--dedup-ttl-hours {hours}: use 1 to 8784 hours (one year)"
            ));
        }
        if let Some(url) = &self.agent_webhook {
            validate_agent_webhook(url)?;
        }
        if let Some(url) = &self.public_url {
            validate_public_url(url)?;
        }
        Ok(())
    }
}

/// The embedded adapters wired together.
#[derive(Clone)]
pub struct Embedded {
    pub config: EmbeddedConfig,
    pub db: Db,
    pub directory: SqliteDirectory,
    pub subscriptions: SqliteSubscriptions,
    pub incidents: SqliteIncidents,
    pub dispatcher: SqliteDispatcher,
    pub queue: SqliteQueue,
    pub state: Arc<AppState>,
    pub triage: Triage,
    pub sessions: SqliteSessions,
    /// Renders the process's metrics (installed at open).
    pub metrics: PrometheusHandle,
    /// The console's pages and management API, served with the ingest routes.
    pub console: Arc<ConsoleState>,
}

/// Checks an agent webhook URL given on the command line.
/// `--public-url`: an http(s) origin (and optional path prefix), no query or credentials.
pub fn validate_public_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("--public-url {url:?}: {e}"))?;
    let ok = matches!(parsed.scheme(), "http" | "https")
        && parsed.host().is_some()
        && parsed.username().is_empty()
        && parsed.password().is_none()
        && parsed.query().is_none()
        && parsed.fragment().is_none();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--public-url {url:?}: use the http:// or https:// address senders reach this server at, \
             without credentials, query or fragment"
        ))
    }
}

pub fn validate_agent_webhook(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("--agent-webhook {url:?}: {e}"))?;
    match parsed.scheme() {
        "http" | "https" if parsed.host().is_some() => Ok(()),
        _ => Err(format!(
            "--agent-webhook {url:?}: use an http:// or https:// URL"
        )),
    }
}

impl Embedded {
    /// Opens the database and builds every adapter; HTTPS GETs (SNS certificates and
    /// subscription confirmations) go out with reqwest.
    pub fn open(config: EmbeddedConfig) -> Result<Embedded, StoreError> {
        Self::open_with(config, Arc::new(ReqwestGet::new()))
    }

    /// Like [`Embedded::open`] with the HTTPS client injected (tests record what it fetches).
    pub fn open_with(
        config: EmbeddedConfig,
        https: Arc<dyn HttpsGet>,
    ) -> Result<Embedded, StoreError> {
        config.validate().map_err(StoreError::Invalid)?;
        let metrics = crate::telemetry::prometheus::install();
        let db = Db::open(&config.db_path)?;
        let directory = SqliteDirectory::new(db.clone());
        let subscriptions = SqliteSubscriptions::new(db.clone());
        let incidents = SqliteIncidents::new(db.clone());
        let dispatcher = SqliteDispatcher::new(db.clone());
        let ledger = SqliteLedger::new(db.clone(), config.dedup);
        let mut state = AppState::new(
            Arc::new(directory.clone()),
            Arc::new(ledger.clone()),
            Arc::new(incidents.clone()),
            config.rate_limit,
        );
        state.max_alerts = config.max_alerts;
        state.usage = Some(crate::http::UsageRecorder::new(Arc::new(directory.clone())));
        state.body_timeout = config.limits.request_timeout;
        let certs = CertCache::new(https.clone());
        if let Some(path) = &config.sns_certs {
            let n = certs.seed_from(path).map_err(StoreError::Invalid)?;
            info!(certificates = n, path = %path.display(), "pre-seeded SNS signing certificates");
        }
        state.sns = Some(SnsSupport {
            certs,
            confirmer: Arc::new(SubscribeUrlConfirmer::new(https)),
            subscriptions: Arc::new(subscriptions.clone()),
        });
        let state = Arc::new(state);
        let sessions = SqliteSessions::new(db.clone());
        let console = Arc::new(ConsoleState {
            directory: Arc::new(directory.clone()),
            incidents: Arc::new(incidents.clone()),
            ledger: state.ledger.clone(),
            sessions: Arc::new(sessions.clone()),
            subscriptions: Arc::new(subscriptions.clone()),
            tasks: Arc::new(dispatcher.clone()),
            usage: Some(Arc::new(directory.clone())),
            runtime: Default::default(),
            config: ConsoleConfig {
                public_url: config.public_url.clone(),
                live: LiveMode::Stream,
                rate_limit: config.rate_limit,
                host: HostKind::Embedded,
            },
        });
        let triage = Triage {
            incidents: Arc::new(incidents.clone()),
            settings: Arc::new(directory.clone()),
            dispatcher: Arc::new(dispatcher.clone()),
            keys: Arc::new(ledger.clone()),
            max_receives: crate::triage::MAX_RECEIVES,
        };
        Ok(Embedded {
            queue: SqliteQueue::new(db.clone()),
            config,
            db,
            directory,
            subscriptions,
            incidents,
            dispatcher,
            state,
            triage,
            sessions,
            console,
            metrics,
        })
    }

    /// On an empty database, creates tenant `demo` with one key and returns it (shown once).
    pub async fn bootstrap_demo(&self) -> Result<Option<IssuedKey>, StoreError> {
        if !self.directory.is_empty().await? {
            return Ok(None);
        }
        Ok(Some(self.directory.create_key("demo", "demo").await?))
    }

    /// The ingest API and the console on one router, with `/metrics` unless
    /// `config.metrics_addr` puts it on an address of its own.
    pub fn router(&self) -> axum::Router {
        self.app_router(self.config.metrics_addr.is_none())
    }

    fn app_router(&self, with_metrics: bool) -> axum::Router {
        let app = router(self.state.clone()).merge(crate::console::router(self.console.clone()));
        if with_metrics {
            app.merge(self.metrics_router())
        } else {
            app
        }
    }

    /// `GET /metrics`: Prometheus' text format. The queue gauges are read at scrape time, at
    /// most once a second: `/metrics` may be on the public address, and the reading counts rows.
    pub fn metrics_router(&self) -> axum::Router {
        let this = self.clone();
        let last_read = Arc::new(tokio::sync::Mutex::new(None::<std::time::Instant>));
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let (this, last_read) = (this.clone(), last_read.clone());
                async move {
                    let mut last = last_read.lock().await;
                    if last.is_none_or(|at| at.elapsed() >= QUEUE_READ_EVERY) {
                        match this.queue.stats().await {
                            Ok(q) => crate::telemetry::queue(
                                q.queued.max(0) as u64,
                                Duration::from_millis(q.oldest_age_ms.max(0) as u64),
                                q.dead_letters.max(0) as u64,
                            ),
                            Err(e) => warn!(error = %e, "reading the queue for /metrics failed"),
                        }
                        *last = Some(std::time::Instant::now());
                    }
                    drop(last);
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        this.metrics.render(),
                    )
                }
            }),
        )
    }

    /// Serves the API on `listener` and runs the workers until `shutdown` resolves; then stops
    /// accepting, finishes in-flight requests and triage, and flushes the database.
    pub async fn run(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let metrics = match self.config.metrics_addr {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
            None => None,
        };
        self.run_with(listener, metrics, shutdown).await
    }

    /// Like [`Embedded::run`] with the metrics listener bound by the caller: given one,
    /// `/metrics` is served there only.
    pub async fn run_with(
        &self,
        listener: tokio::net::TcpListener,
        metrics: Option<tokio::net::TcpListener>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let released = self.queue.release_in_flight().await.unwrap_or(0);
        if released > 0 {
            info!(released, "re-queued alerts claimed by a previous process");
        }
        // Alerts are triaged in the commit that admits them; the triage loops take what that
        // could not triage, and what earlier versions or a failed pass left queued.
        self.queue.triage_at_admission(self.triage.clone());
        // Removed however this ends, even dropped or unwinding: the pass holds triage, whose
        // adapters hold the database, a cycle that would keep the writer alive.
        struct QueueAtAdmission(SqliteQueue);
        impl Drop for QueueAtAdmission {
            fn drop(&mut self) {
                self.0.queue_at_admission();
            }
        }
        let _pass = QueueAtAdmission(self.queue.clone());
        let (stop_tx, stop_rx) = watch::channel(false);
        let triage: Vec<_> = (0..TRIAGE_WORKERS)
            .map(|_| tokio::spawn(self.clone().triage_loop(stop_rx.clone())))
            .collect();
        let delivery = self
            .config
            .agent_webhook
            .clone()
            .map(|url| tokio::spawn(self.clone().delivery_loop(url, stop_rx.clone())));

        let addr: Option<SocketAddr> = listener.local_addr().ok();
        info!(?addr, db = %self.config.db_path.display(), "causeflow serve listening");
        // Open event streams end as shutdown begins, so in-flight requests can finish.
        let console = self.console.clone();
        let shutdown = async move {
            shutdown.await;
            console.runtime.close();
        };
        let metrics_server = match metrics {
            Some(listener) => {
                info!(addr = ?listener.local_addr().ok(), "metrics on their own address");
                let mut stop = stop_rx.clone();
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                Some(tokio::spawn(server::serve(
                    listener,
                    self.metrics_router(),
                    self.config.limits,
                    stopped,
                )))
            }
            None => None,
        };
        let app = self.app_router(metrics_server.is_none());
        let served = server::serve(listener, app, self.config.limits, shutdown).await;
        let _ = stop_tx.send(true);
        if let Some(m) = metrics_server {
            let _ = m.await;
        }
        for t in triage {
            let _ = t.await;
        }
        if let Some(d) = delivery {
            let _ = d.await;
        }
        self.db.close();
        info!("stopped; everything acknowledged is on disk");
        served
    }

    /// Triages queued alerts, a batch per writer job, until told to stop.
    async fn triage_loop(self, mut stop: watch::Receiver<bool>) {
        let signals = self.db.signals();
        let base = self.config.retry_base.as_millis() as i64;
        let lease = self.config.visibility.as_millis() as i64;
        while !*stop.borrow() {
            match self
                .queue
                .triage_batch(self.triage.clone(), TRIAGE_BATCH, lease, base)
                .await
            {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => warn!(error = %e, "triaging queued alerts failed; they stay queued"),
            }
            tokio::select! {
                _ = signals.queued.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// POSTs recorded agent tasks to the agent webhook, retrying with backoff.
    async fn delivery_loop(self, url: String, mut stop: watch::Receiver<bool>) {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot build the agent webhook client; tasks stay recorded only");
                return;
            }
        };
        let signals = self.db.signals();
        while !*stop.borrow() {
            let due = self.dispatcher.due(50).await.unwrap_or_else(|e| {
                warn!(error = %e, "reading agent tasks failed");
                Vec::new()
            });
            for row in due {
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-causeflow-task-id", &row.task_id)
                    .header("x-causeflow-agent", &row.agent)
                    .body(row.body.clone())
                    .send()
                    .await;
                let ok = matches!(&sent, Ok(r) if r.status().is_success());
                crate::telemetry::dispatch_attempt(ok);
                if !ok {
                    warn!(task = %row.task_id, agent = %row.agent, status = ?sent.as_ref().map(|r| r.status().as_u16()).ok(),
                          "agent webhook delivery failed; will retry");
                }
                let backoff = 1_000i64 << row.attempts.clamp(0, 8);
                if let Err(e) = self
                    .dispatcher
                    .record_attempt(&row, ok, backoff.min(300_000))
                    .await
                {
                    warn!(error = %e, "recording a delivery attempt failed");
                }
            }
            tokio::select! {
                _ = signals.dispatched.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => {}
            }
        }
    }
}
