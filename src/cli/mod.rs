//! The `causeflow` commands, one module per command group. Each parses its flags and calls the
//! library; where a command can act on a deployed stack, `--aws` and the stack's table and
//! queue names ([`Target`]) work the same way everywhere.

pub mod console;
pub mod dead_letters;
pub mod incidents;
pub mod keys;
pub mod local_stack;
pub mod logformat;
pub mod logsink;
pub mod serve;
pub mod sign;
pub mod stores;
pub mod subscriptions;
pub mod tenants;

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Clone)]
pub struct DbArg {
    /// SQLite database file.
    #[arg(
        long,
        env = "CAUSEFLOW_DB",
        default_value = "./causeflow.db",
        global = true
    )]
    pub db: PathBuf,
}

/// What a command acts on: the SQLite file, or with `--aws` a deployed stack. Each command reads
/// only the names it needs and says which one is missing; the rest are ignored. The names can
/// come from the environment (the stack's outputs exported), and are ignored without `--aws`.
#[derive(Args, Clone)]
pub struct Target {
    #[command(flatten)]
    pub db: DbArg,
    /// Use a deployed stack instead of the SQLite file (AWS credentials and region come from the
    /// usual AWS environment and profile).
    #[arg(long)]
    pub aws: bool,
    /// The stack's KeysTable (its output `KeysTableName`).
    #[arg(long, env = "KEYS_TABLE")]
    pub keys_table: Option<String>,
    /// The stack's TenantsTable (its output `TenantsTableName`).
    #[arg(long, env = "TENANTS_TABLE")]
    pub tenants_table: Option<String>,
    /// The stack's SubscriptionsTable (its output `SubscriptionsTableName`).
    #[arg(long, env = "SUBSCRIPTIONS_TABLE")]
    pub subscriptions_table: Option<String>,
    /// The stack's IncidentsTable (its output `IncidentsTableName`).
    #[arg(long, env = "INCIDENTS_TABLE")]
    pub incidents_table: Option<String>,
    /// The stack's DedupTable (its output `DedupTableName`).
    #[arg(long, env = "DEDUP_TABLE")]
    pub dedup_table: Option<String>,
    /// The stack's alert queue (its output `AlertQueueUrl`).
    #[arg(long, env = "ALERT_QUEUE_URL")]
    pub queue_url: Option<String>,
    /// The stack's ConsoleSessionsTable (its output `ConsoleSessionsTableName`).
    #[arg(long, env = "SESSIONS_TABLE")]
    pub sessions_table: Option<String>,
    /// The stack's dead-letter queue (its output `AlertDeadLetterQueueUrl`).
    #[arg(long, env = "ALERT_DLQ_URL")]
    pub dlq_url: Option<String>,
}
