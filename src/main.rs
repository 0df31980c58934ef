//! `causeflow`: the one-machine server and the management commands. Flag parsing and printing
//! only; everything else lives in the `causeflow-shared` library.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use causeflow_shared::auth::sign;
use causeflow_shared::deadletter::{list, redrive, DeadLetters};
use causeflow_shared::dedup::DedupConfig;
use causeflow_shared::embedded::{Embedded, EmbeddedConfig};
use causeflow_shared::http::server::{raise_fd_limit, ServerLimits, RESERVED_FDS};
use causeflow_shared::http::RateLimit;
use causeflow_shared::model::{IncidentStatus, Severity};
use causeflow_shared::policy::{valid_agent_name, AgentOverrides};
use causeflow_shared::ports::{AlertLedger, IncidentQuery, IncidentStore, KeyAdmin};
use causeflow_shared::sqlite::{
    Db, SqliteDirectory, SqliteIncidents, SqliteLedger, SqliteQueue, SqliteSubscriptions,
};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "causeflow", version, about = "CauseFlow alert ingest")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct DbArg {
    /// SQLite database file.
    #[arg(
        long,
        env = "CAUSEFLOW_DB",
        default_value = "./causeflow.db",
        global = true
    )]
    db: PathBuf,
}

/// Where key and tenant commands write: the SQLite file, or a deployed stack's tables.
#[derive(Args, Clone)]
struct StoreArgs {
    #[command(flatten)]
    db: DbArg,
    /// Use the DynamoDB tables of a deployed stack instead of the SQLite file (AWS credentials
    /// and region come from the usual AWS environment and profile).
    #[arg(long)]
    aws: bool,
    /// The stack's KeysTable (its output `KeysTableName`).
    #[arg(long, env = "KEYS_TABLE", requires = "aws")]
    keys_table: Option<String>,
    /// The stack's TenantsTable (its output `TenantsTableName`).
    #[arg(long, env = "TENANTS_TABLE", requires = "aws")]
    tenants_table: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API, the triage worker and agent dispatch on one machine.
    Serve(ServeArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Manage tenants.
    #[command(subcommand)]
    Tenants(TenantsCmd),
    /// Print the signature header(s) for the body read from standard input.
    Sign {
        /// The webhook secret.
        #[arg(long, env = "CAUSEFLOW_WEBHOOK_SECRET")]
        secret: String,
        /// Sign "{unix seconds}:{body}" and print X-Webhook-Timestamp too (optionally at the given time).
        #[arg(long, num_args = 0..=1, default_missing_value = "now")]
        timestamp: Option<String>,
    },
    /// Read incidents.
    #[command(subcommand)]
    Incidents(IncidentsCmd),
    /// SNS subscriptions to tenants' CloudWatch endpoints.
    #[command(subcommand)]
    Subscriptions(SubscriptionsCmd),
    /// Alerts that triage gave up on: list them, and redrive them after a fix.
    #[command(subcommand)]
    DeadLetters(DeadLettersCmd),
}

/// Where dead letters are: the SQLite file, or a deployed stack's dead-letter queue.
#[derive(Args, Clone)]
struct QueueArgs {
    #[command(flatten)]
    db: DbArg,
    /// Use a deployed stack's dead-letter queue (AWS credentials and region from the usual AWS
    /// environment and profile).
    #[arg(long)]
    aws: bool,
    /// The stack's dead-letter queue (its output `AlertDeadLetterQueueUrl`).
    #[arg(long, env = "ALERT_DLQ_URL", requires = "aws")]
    dlq_url: Option<String>,
    /// For redrive: the stack's alert queue (its output `AlertQueueUrl`).
    #[arg(long, env = "ALERT_QUEUE_URL", requires = "aws")]
    queue_url: Option<String>,
    /// For redrive: the stack's dedup table (its output `DedupTableName`).
    #[arg(long, env = "DEDUP_TABLE", requires = "aws")]
    dedup_table: Option<String>,
}

#[derive(Subcommand)]
enum DeadLettersCmd {
    /// List dead-lettered alerts (they stay dead-lettered; on AWS, listed ones are hidden from
    /// other readers for a minute).
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// Queue dead-lettered alerts again under their own incident ids (all, or those named by
    /// --id); a firing whose key another incident holds by now is dropped as a duplicate.
    Redrive {
        /// A dead letter's id, as `list` prints it; repeat for several. Default: all.
        #[arg(long = "id")]
        ids: Vec<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
        /// The dedup TTL of the server (`serve --dedup-ttl-hours`; the stack's DedupTtlHours).
        #[arg(long, default_value_t = 168)]
        dedup_ttl_hours: u64,
        #[command(flatten)]
        queue: QueueArgs,
    },
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    #[command(flatten)]
    db: DbArg,
    /// Also POST every agent task to this URL (tasks are always recorded in the database).
    #[arg(long)]
    agent_webhook: Option<String>,
    /// Requests per second allowed per tenant (0 = unlimited).
    #[arg(long, default_value_t = 100.0)]
    rate_limit: f64,
    /// Burst of requests allowed per tenant above the rate.
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
}

/// `10s`, `500ms`, `2m` or a number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
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

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a key (and the tenant if new); prints the key and its webhook secret once.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List a tenant's keys (never the keys or secrets themselves).
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a key; requests with it are refused at once.
    Revoke {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        key: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Issue a new webhook secret; the old one keeps verifying until `retire-secret`.
    RotateSecret {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        key: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Stop accepting the previous webhook secret of a rotated key.
    RetireSecret {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        key: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Store the documented development key of `events/` for tenant `demo` (local use only).
    CreateDev {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Register the Sentry integration's Client Secret (read from standard input when --secret is -).
    SetSentrySecret {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        key: String,
        #[arg(long)]
        secret: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum TenantsCmd {
    /// Let SNS messages from this topic post CloudWatch alarms for the tenant without credentials
    /// (their SNS signature is still verified).
    AllowTopic {
        #[arg(long)]
        tenant: String,
        /// arn:aws:sns:<region>:<account>:<topic>
        #[arg(long)]
        topic: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a topic from the tenant's allow-list.
    DisallowTopic {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        topic: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Override which agents a severity dispatches for this tenant (--agents "" dispatches none;
    /// --reset restores the default table).
    SetAgents {
        #[arg(long)]
        tenant: String,
        #[arg(long, required_unless_present = "reset")]
        severity: Option<String>,
        /// Comma-separated agent names.
        #[arg(long, required_unless_present = "reset")]
        agents: Option<String>,
        #[arg(long)]
        reset: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum SubscriptionsCmd {
    /// List a tenant's SNS subscriptions and their state (pending, confirmed, unsubscribed).
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArg,
        /// Read a deployed stack's SubscriptionsTable instead of the SQLite file.
        #[arg(long)]
        aws: bool,
        /// The stack's SubscriptionsTable (its output `SubscriptionsTableName`).
        #[arg(long, env = "SUBSCRIPTIONS_TABLE", requires = "aws")]
        subscriptions_table: Option<String>,
    },
}

#[derive(Subcommand)]
enum IncidentsCmd {
    /// List a tenant's incidents, newest first.
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_parser = ["open", "resolved"])]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArg,
    },
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Keys(cmd) => keys(cmd).await,
        Command::Tenants(cmd) => tenants(cmd).await,
        Command::Sign { secret, timestamp } => sign_stdin(&secret, timestamp.as_deref()),
        Command::Incidents(cmd) => incidents(cmd).await,
        Command::Subscriptions(cmd) => subscriptions(cmd).await,
        Command::DeadLetters(cmd) => dead_letters(cmd).await,
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    init_logging(args.log_format == "json");
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
        eprintln!("shutting down: finishing in-flight requests and triage");
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

/// Opens the SQLite database named by `--db`.
fn open_db(db: &DbArg) -> Result<Db> {
    Db::open(&db.db).with_context(|| format!("opening {}", db.db.display()))
}

/// The key store the command acts on.
async fn open_directory(store: &StoreArgs) -> Result<Box<dyn KeyAdmin>> {
    if store.aws {
        return aws_directory(store).await;
    }
    let db = open_db(&store.db)?;
    Ok(Box::new(SqliteDirectory::new(db)))
}

#[cfg(feature = "aws")]
async fn aws_directory(store: &StoreArgs) -> Result<Box<dyn KeyAdmin>> {
    let keys = store
        .keys_table
        .as_deref()
        .context("--aws needs --keys-table (or KEYS_TABLE)")?;
    let tenants = store
        .tenants_table
        .as_deref()
        .context("--aws needs --tenants-table (or TENANTS_TABLE)")?;
    let sdk = causeflow_shared::aws::sdk_config().await;
    Ok(Box::new(causeflow_shared::aws::DynamoDirectory::new(
        aws_sdk_dynamodb_client(&sdk),
        keys,
        tenants,
    )))
}

#[cfg(feature = "aws")]
fn aws_sdk_dynamodb_client(
    sdk: &causeflow_shared::aws::SdkConfig,
) -> causeflow_shared::aws::DynamoClient {
    causeflow_shared::aws::DynamoClient::new(sdk)
}

#[cfg(feature = "aws")]
async fn aws_subscriptions(
    table: Option<&str>,
) -> Result<Box<dyn causeflow_shared::ports::Subscriptions>> {
    let table = table.context("--aws needs --subscriptions-table (or SUBSCRIPTIONS_TABLE)")?;
    let sdk = causeflow_shared::aws::sdk_config().await;
    Ok(Box::new(causeflow_shared::aws::DynamoSubscriptions::new(
        aws_sdk_dynamodb_client(&sdk),
        table,
    )))
}

#[cfg(not(feature = "aws"))]
async fn aws_subscriptions(
    _: Option<&str>,
) -> Result<Box<dyn causeflow_shared::ports::Subscriptions>> {
    bail!("this causeflow was built without AWS support: build it with `cargo build --release --features aws`")
}

#[cfg(not(feature = "aws"))]
async fn aws_directory(_: &StoreArgs) -> Result<Box<dyn KeyAdmin>> {
    bail!("this causeflow was built without AWS support: build it with `cargo build --release --features aws`")
}

async fn keys(cmd: KeysCmd) -> Result<()> {
    match cmd {
        KeysCmd::Create {
            tenant,
            name,
            json,
            store,
        } => {
            let k = open_directory(&store)
                .await?
                .create_key(&tenant, &name)
                .await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"tenantId": tenant, "keyId": k.key_id, "apiKey": k.api_key, "webhookSecret": k.webhook_secret})
                );
            } else {
                println!(
                    "Created key {} for tenant {tenant}. Shown once:\n  API key:        {}\n  Webhook secret: {}",
                    k.key_id, k.api_key, k.webhook_secret
                );
            }
        }
        KeysCmd::List {
            tenant,
            json,
            store,
        } => {
            let keys = open_directory(&store).await?.list_keys(&tenant).await?;
            if json {
                println!("{}", serde_json::to_string(&keys)?);
            } else if keys.is_empty() {
                println!("No keys for tenant {tenant}.");
            } else {
                for k in keys {
                    let mut flags = Vec::new();
                    if k.revoked {
                        flags.push("revoked");
                    }
                    if k.rotating {
                        flags.push("rotating");
                    }
                    if k.has_sentry_secret {
                        flags.push("sentry-secret");
                    }
                    println!(
                        "{}\t{}\t{}\t{}",
                        k.key_id,
                        k.name,
                        k.created_at,
                        flags.join(",")
                    );
                }
            }
        }
        KeysCmd::Revoke { tenant, key, store } => {
            open_directory(&store)
                .await?
                .revoke_key(&tenant, &key)
                .await?;
            println!("Revoked {key}.");
        }
        KeysCmd::RotateSecret {
            tenant,
            key,
            json,
            store,
        } => {
            let secret = open_directory(&store)
                .await?
                .rotate_secret(&tenant, &key)
                .await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"tenantId": tenant, "keyId": key, "webhookSecret": secret})
                );
            } else {
                println!(
                    "New webhook secret for {key} (shown once): {secret}\nThe previous secret still verifies until `causeflow keys retire-secret`."
                );
            }
        }
        KeysCmd::RetireSecret { tenant, key, store } => {
            open_directory(&store)
                .await?
                .retire_secret(&tenant, &key)
                .await?;
            println!("Only the current webhook secret of {key} verifies now.");
        }
        KeysCmd::CreateDev { store } => {
            if store.aws {
                bail!("the development key is public: it is for the local database only, never a deployed stack");
            }
            let k = causeflow_shared::auth::dev_key();
            open_directory(&store)
                .await?
                .store_key("demo", "development", &k)
                .await?;
            println!(
                "Stored the development key {} for tenant demo (local use only; never on a deployed stack).",
                k.key_id
            );
        }
        KeysCmd::SetSentrySecret {
            tenant,
            key,
            secret,
            store,
        } => {
            let secret = if secret == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                secret
            };
            open_directory(&store)
                .await?
                .set_sentry_secret(&tenant, &key, &secret)
                .await?;
            println!("Sentry-Hook-Signature is now verified for {key}.");
        }
    }
    Ok(())
}

type DeadLetterStores = (Box<dyn DeadLetters>, Box<dyn AlertLedger>);

/// The dead letters and the ledger that re-admits them, on either host.
async fn open_dead_letters(queue: &QueueArgs, dedup: DedupConfig) -> Result<DeadLetterStores> {
    if queue.aws {
        return aws_dead_letters(queue, dedup).await;
    }
    let db = open_db(&queue.db)?;
    Ok((
        Box::new(SqliteQueue::new(db.clone())),
        Box::new(SqliteLedger::new(db, dedup)),
    ))
}

#[cfg(feature = "aws")]
async fn aws_dead_letters(queue: &QueueArgs, dedup: DedupConfig) -> Result<DeadLetterStores> {
    use causeflow_shared::aws::{DynamoLedger, SqsClient, SqsDeadLetters};
    let dlq = queue
        .dlq_url
        .as_deref()
        .context("--aws needs --dlq-url (or ALERT_DLQ_URL)")?;
    let sdk = causeflow_shared::aws::sdk_config().await;
    let sqs = SqsClient::new(&sdk);
    let letters = Box::new(SqsDeadLetters::new(sqs.clone(), dlq));
    // Listing needs only the dead-letter queue; a ledger without its table refuses to admit.
    let ledger = DynamoLedger::new(
        aws_sdk_dynamodb_client(&sdk),
        sqs,
        queue.dedup_table.as_deref().unwrap_or_default(),
        queue.queue_url.as_deref().unwrap_or_default(),
        dedup,
    );
    Ok((letters, Box::new(ledger)))
}

#[cfg(not(feature = "aws"))]
async fn aws_dead_letters(_: &QueueArgs, _: DedupConfig) -> Result<DeadLetterStores> {
    bail!("this causeflow was built without AWS support: build it with `cargo build --release --features aws`")
}

async fn dead_letters(cmd: DeadLettersCmd) -> Result<()> {
    match cmd {
        DeadLettersCmd::List { limit, json, queue } => {
            let (letters, _) = open_dead_letters(&queue, DedupConfig::default()).await?;
            let letters = list(&*letters, limit.clamp(1, 10_000)).await?;
            if json {
                let rows: Vec<serde_json::Value> = letters
                    .iter()
                    .map(|l| serde_json::json!({"id": l.id, "receiveCount": l.receive_count, "deadAt": l.dead_at, "alert": l.alert()}))
                    .collect();
                println!("{}", serde_json::to_string(&rows)?);
            } else if letters.is_empty() {
                println!("No dead letters.");
            } else {
                for l in letters {
                    let what = match l.alert() {
                        Some(m) => format!(
                            "{}\t{}\t{:?}\t{}\t{}\t{}",
                            m.tenant_id,
                            m.provider,
                            m.alert.status,
                            m.alert.source_alert_id,
                            m.incident_id,
                            m.alert.title
                        ),
                        None => "(not a queued alert)".into(),
                    };
                    println!("{}\t{}\t{}", l.id, l.dead_at.unwrap_or_default(), what);
                }
            }
        }
        DeadLettersCmd::Redrive {
            ids,
            limit,
            json,
            dedup_ttl_hours,
            queue,
        } => {
            if queue.aws && (queue.queue_url.is_none() || queue.dedup_table.is_none()) {
                bail!("redrive --aws needs --queue-url and --dedup-table (or ALERT_QUEUE_URL and DEDUP_TABLE)");
            }
            let dedup = DedupConfig {
                ttl: Duration::from_secs(dedup_ttl_hours.clamp(1, 24 * 366) * 3600),
                ..DedupConfig::default()
            };
            let (letters, ledger) = open_dead_letters(&queue, dedup).await?;
            let results = redrive(&*letters, &*ledger, limit.clamp(1, 10_000), &ids).await?;
            if json {
                println!("{}", serde_json::to_string(&results)?);
            } else if results.is_empty() {
                println!("No dead letters to redrive.");
            } else {
                for r in &results {
                    match (&r.result, &r.error) {
                        (Some(a), None) => println!(
                            "{}\t{}\t{}\t{}",
                            r.id,
                            serde_json::to_value(a.outcome)?
                                .as_str()
                                .unwrap_or_default(),
                            a.source_alert_id,
                            a.incident_id.as_deref().unwrap_or("-")
                        ),
                        (_, Some(e)) => println!("{}\tleft: {e}", r.id),
                        (None, None) => println!("{}", r.id),
                    }
                }
            }
            if results.iter().any(|r| r.error.is_some()) {
                bail!("some dead letters were not redriven (see above)");
            }
        }
    }
    Ok(())
}

async fn subscriptions(cmd: SubscriptionsCmd) -> Result<()> {
    use causeflow_shared::ports::Subscriptions;
    let SubscriptionsCmd::List {
        tenant,
        json,
        db,
        aws,
        subscriptions_table,
    } = cmd;
    let subs = if aws {
        aws_subscriptions(subscriptions_table.as_deref())
            .await?
            .list(&tenant)
            .await?
    } else {
        let db = open_db(&db)?;
        SqliteSubscriptions::new(db).list(&tenant).await?
    };
    if json {
        println!("{}", serde_json::to_string(&subs)?);
    } else if subs.is_empty() {
        println!("No SNS subscriptions for tenant {tenant}.");
    } else {
        for s in subs {
            println!(
                "{}\t{}\t{}\t{}",
                s.topic_arn,
                s.state.as_str(),
                s.subscription_arn.unwrap_or_default(),
                s.updated_at
            );
        }
    }
    Ok(())
}

async fn tenants(cmd: TenantsCmd) -> Result<()> {
    let cmd = match cmd {
        TenantsCmd::AllowTopic {
            tenant,
            topic,
            store,
        } => {
            open_directory(&store)
                .await?
                .allow_topic(&tenant, &topic, true)
                .await?;
            println!("SNS topic {topic} may now post CloudWatch alarms for tenant {tenant}.");
            return Ok(());
        }
        TenantsCmd::DisallowTopic {
            tenant,
            topic,
            store,
        } => {
            open_directory(&store)
                .await?
                .allow_topic(&tenant, &topic, false)
                .await?;
            println!("SNS topic {topic} is no longer allowed for tenant {tenant}.");
            return Ok(());
        }
        other => other,
    };
    let TenantsCmd::SetAgents {
        tenant,
        severity,
        agents,
        reset,
        store,
    } = cmd
    else {
        unreachable!("handled above")
    };
    let dir = open_directory(&store).await?;
    let mut overrides = if reset {
        AgentOverrides::default()
    } else {
        dir.agent_overrides(&tenant).await?
    };
    if let (Some(sev), Some(agents)) = (severity, agents) {
        let sev = Severity::from_label(&sev)
            .filter(|s| s.as_str() == sev.trim().to_ascii_lowercase())
            .with_context(|| {
                format!("--severity {sev:?}: use critical, high, medium, low or info")
            })?;
        let list: Vec<String> = agents
            .split(',')
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        if let Some(bad) = list.iter().find(|a| !valid_agent_name(a)) {
            bail!("agent name {bad:?}: use lower-case letters, digits, '-' or '_'");
        }
        overrides.0.insert(sev, list);
    }
    dir.set_agent_overrides(&tenant, &overrides).await?;
    println!("{}", serde_json::to_string(&overrides)?);
    Ok(())
}

fn sign_stdin(secret: &str, timestamp: Option<&str>) -> Result<()> {
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body)?;
    match timestamp {
        None => println!("X-Webhook-Signature: {}", sign(secret, &[&body])),
        Some(ts) => {
            let ts = if ts == "now" {
                chrono::Utc::now().timestamp().to_string()
            } else {
                ts.parse::<i64>()
                    .with_context(|| format!("--timestamp {ts:?}: use Unix seconds"))?
                    .to_string()
            };
            println!(
                "X-Webhook-Signature: {}",
                sign(secret, &[ts.as_bytes(), b":", &body])
            );
            println!("X-Webhook-Timestamp: {ts}");
        }
    }
    Ok(())
}

async fn incidents(cmd: IncidentsCmd) -> Result<()> {
    let IncidentsCmd::List {
        tenant,
        status,
        limit,
        json,
        db,
    } = cmd;
    let db = open_db(&db)?;
    let store = SqliteIncidents::new(db);
    let query = IncidentQuery {
        status: status.map(|s| {
            if s == "open" {
                IncidentStatus::Open
            } else {
                IncidentStatus::Resolved
            }
        }),
        limit: limit.clamp(1, 1000),
        cursor: None,
    };
    let page = store.list(&tenant, &query).await?;
    if json {
        println!("{}", serde_json::to_string(&page.incidents)?);
    } else if page.incidents.is_empty() {
        println!("No incidents for tenant {tenant}.");
    } else {
        for i in page.incidents {
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}",
                i.incident_id,
                i.status.as_str(),
                i.severity,
                i.provider,
                i.agents.join(","),
                i.title
            );
        }
    }
    Ok(())
}
