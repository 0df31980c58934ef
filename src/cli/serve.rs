//! `causeflow serve`: the one-machine server.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use causeflow_shared::auth::sign;
use causeflow_shared::dedup::DedupConfig;
use causeflow_shared::host::embedded::{Embedded, EmbeddedConfig};
use causeflow_shared::http::server::{raise_fd_limit, ServerLimits, RESERVED_FDS};
use causeflow_shared::http::RateLimit;
use clap::Args;

use super::DbArg;

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    #[command(flatten)]
    db: DbArg,
    /// Also POST every agent task to this URL (tasks are always recorded in the database).
    #[arg(long)]
    agent_webhook: Option<String>,
    /// Alerts per second allowed per tenant, charged after authentication (0 = unlimited).
    #[arg(long, default_value_t = 100.0)]
    rate_limit: f64,
    /// Burst of alerts allowed per tenant above the rate.
    #[arg(long, default_value_t = 200.0)]
    rate_burst: f64,
    /// Hours after which an unresolved alert's dedup record expires.
    #[arg(long, default_value_t = 168)]
    dedup_ttl_hours: u64,
    /// Pre-seed SNS signing certificates (air-gapped installs): a directory mirroring the
    /// SigningCertURLs as <host>/<path>.pem, or a JSON file {"<url>": "<PEM>"}.
    #[arg(long)]
    sns_certs: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    /// Most alerts one request may carry; more is refused with 413 too_many_alerts.
    #[arg(long, default_value_t = causeflow_shared::http::DEFAULT_MAX_ALERTS)]
    max_alerts: usize,
    /// Longest wait for a request's headers, from its first byte (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    header_timeout: Duration,
    /// Longest a request may take once its headers are in, body included (408 beyond).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// How long an idle keep-alive connection stays open.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Connections open at once; more wait in the listen backlog. Default: 1024, or fewer when
    /// the open-files limit is lower.
    #[arg(long)]
    max_connections: Option<usize>,
    /// The address senders and browsers reach this server at (behind a proxy or TLS
    /// terminator); webhook URLs in the console and sign-in links use it. Default: the request's
    /// own host.
    #[arg(long, env = "CAUSEFLOW_PUBLIC_URL")]
    public_url: Option<String>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address only, e.g. 127.0.0.1:9464, so
    /// the public address does not show them. Default: `/metrics` on --addr.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
}

/// `10s`, `500ms`, `2m` or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: use a duration such as 10s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: use a duration such as 10s, 500ms or 2m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?}: out of range"))
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    // Flushes the log lines still buffered when `serve` returns.
    let _log_guard = init_logging(args.log_format == "json");
    let mut config = EmbeddedConfig::new(&args.db.db);
    config.rate_limit = RateLimit {
        per_sec: args.rate_limit,
        burst: args.rate_burst,
    };
    config.dedup = DedupConfig {
        ttl: Duration::from_secs(args.dedup_ttl_hours * 3600),
        ..DedupConfig::default()
    };
    config.agent_webhook = args.agent_webhook.clone();
    config.sns_certs = args.sns_certs.clone();
    config.max_alerts = args.max_alerts;
    config.public_url = args.public_url.clone();
    config.metrics_addr = args.metrics_addr;
    config.limits = ServerLimits {
        header_timeout: args.header_timeout,
        request_timeout: args.request_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: args
            .max_connections
            .unwrap_or(ServerLimits::default().max_connections),
    };
    config.validate().map_err(anyhow::Error::msg)?;
    // Client sockets, not the default 1024 descriptors, should bound the server.
    let fds = raise_fd_limit().context("raising the open-files limit")?;
    let room = usize::try_from(fds.saturating_sub(RESERVED_FDS as u64)).unwrap_or(usize::MAX);
    match args.max_connections {
        Some(n) if n > room => bail!(
            "--max-connections {n} needs more open files than this process may have ({fds}): \
             lower it to {room} or raise the limit (ulimit -n, systemd LimitNOFILE)"
        ),
        Some(_) => {}
        None if config.limits.max_connections > room => {
            tracing::warn!(
                fds,
                max_connections = room,
                "few open files allowed: capping connections"
            );
            config.limits.max_connections = room.max(1);
        }
        None => {}
    }
    let app =
        Embedded::open(config).with_context(|| format!("opening {}", args.db.db.display()))?;
    let listener = tokio::net::TcpListener::bind(&args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    let addr = listener.local_addr()?;
    // Handlers go in before "listening" is printed, so a signal sent right after is graceful.
    let shutdown = shutdown_signal()?;
    // Secrets go to a person at a terminal, never into a log (systemd, Docker).
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        if let Some(key) = app.bootstrap_demo().await? {
            print_welcome(&addr.to_string(), &key.api_key, &key.webhook_secret);
            let base = args
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{addr}"));
            let link = causeflow_shared::console::create_sign_in_link(
                &app.sessions,
                "demo",
                Duration::from_secs(3600),
                &base,
            )
            .await?;
            println!(
                "Open the console (this link works once, within an hour; make another with \
                 `causeflow console-link --tenant demo`):\n\n  {link}\n"
            );
        }
    } else if app.directory.is_empty().await? {
        println!(
            "No API keys yet. Create one (it is shown once) with:\n  causeflow keys create --tenant demo --name first --db {}",
            args.db.db.display()
        );
    }
    println!(
        "causeflow serve: listening on http://{addr} (database {})",
        args.db.db.display()
    );
    app.run(listener, shutdown).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM (from a service manager); the handlers are installed at once.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        // A log line, not a bare write to stderr: it stays in order with the buffered lines
        // before it, and `--log-format json` output stays JSON, one object a line.
        tracing::info!("shutting down: finishing in-flight requests and triage");
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

fn print_welcome(addr: &str, api_key: &str, secret: &str) {
    let body = r#"{"sourceAlertId":"demo-checkout-latency","title":"Checkout p99 latency above 2s","status":"firing","severity":"high","service":"checkout","environment":"demo","tags":{"team":"payments"}}"#;
    let sig = sign(secret, &[body.as_bytes()]);
    println!(
        "\nCreated tenant `demo` with its first API key. These are shown once; keep them safe.\n\n  \
         API key:        {api_key}\n  Webhook secret: {secret}\n\n\
         Send a signed sample alert:\n\n  \
         curl -sS -X POST http://{addr}/v1/webhooks/demo/generic \\\n    \
         -H 'Content-Type: application/json' \\\n    \
         -H 'X-API-Key: {api_key}' \\\n    \
         -H 'X-Webhook-Signature: {sig}' \\\n    \
         --data-raw '{body}'\n\n\
         Then read it back:\n\n  \
         curl -sS -H 'X-API-Key: {api_key}' http://{addr}/v1/tenants/demo/incidents\n"
    );
}
/// Logs go to stderr through [`super::logsink`]: a line costs one copy into a buffer that a
/// thread writes out a few dozen times a second, and logging waits rather than drops lines when
/// stderr cannot keep up.
fn init_logging(json: bool) -> super::logsink::Flush {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = super::logsink::buffered(std::io::stderr());
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(terminal);
    if json {
        fmt.json().init();
    } else if terminal {
        // Someone is watching: tracing-subscriber's own format, in colour.
        fmt.init();
    } else {
        // A file, a pipe, a log collector: the same lines, cheaper to write (logformat).
        fmt.event_format(super::logformat::Line)
            .fmt_fields(super::logformat::Fields)
            .init();
    }
    guard
}
