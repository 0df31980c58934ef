//! `causeflow`: the one-machine server and the management commands. The binary only sets up
//! logging and dispatches to `cli/`, one module per command group; everything else lives in the
//! `causeflow-shared` library.

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};

use cli::console::{console_link, sessions, ConsoleLinkArgs, SessionsCmd};
use cli::dead_letters::{dead_letters, DeadLettersCmd};
use cli::incidents::{incidents, IncidentsCmd};
use cli::keys::{keys, KeysCmd};
use cli::local_stack::{local_stack, LocalStackCmd};
use cli::serve::{serve, ServeArgs};
use cli::sign::sign_stdin;
use cli::subscriptions::{subscriptions, SubscriptionsCmd};
use cli::tenants::{tenants, TenantsCmd};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "causeflow", version, about = "CauseFlow alert ingest")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Print a one-time sign-in link to the console for a tenant.
    ConsoleLink(ConsoleLinkArgs),
    /// Console sessions: sign a tenant's sessions out.
    #[command(subcommand)]
    Sessions(SessionsCmd),
    /// The Lambda stack on this machine, in an AWS emulator (scripts/local-stack runs these).
    #[command(subcommand)]
    LocalStack(LocalStackCmd),
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::ConsoleLink(args) => console_link(args).await,
        Command::Sessions(cmd) => sessions(cmd).await,
        Command::Keys(cmd) => keys(cmd).await,
        Command::Tenants(cmd) => tenants(cmd).await,
        Command::Sign { secret, timestamp } => sign_stdin(&secret, timestamp.as_deref()),
        Command::Incidents(cmd) => incidents(cmd).await,
        Command::Subscriptions(cmd) => subscriptions(cmd).await,
        Command::DeadLetters(cmd) => dead_letters(cmd).await,
        Command::LocalStack(cmd) => local_stack(cmd).await,
    }
}
