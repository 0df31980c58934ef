//! `causeflow console-link` and `causeflow sessions`: console sign-in links, and signing a
//! tenant's console sessions out.

use std::time::Duration;

use anyhow::{Context, Result};
use causeflow_shared::console::{create_sign_in_link, MAX_LINK_TTL};
use clap::{Args, Subcommand};

use super::serve::parse_duration;
use super::stores::open_sessions;
use super::Target;

#[derive(Args)]
pub struct ConsoleLinkArgs {
    /// The tenant to sign in to.
    #[arg(long)]
    tenant: String,
    /// How long the link works (it works once): e.g. 15m, 1h; at most 24h.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    ttl: Duration,
    /// The address browsers reach the console at: `causeflow serve`'s --public-url or address,
    /// or the stack's `ApiUrl` output.
    #[arg(
        long,
        env = "CAUSEFLOW_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    public_url: String,
    #[command(flatten)]
    target: Target,
}

/// Prints a one-time sign-in link (to standard output only: it is a credential until used).
pub async fn console_link(args: ConsoleLinkArgs) -> Result<()> {
    if args.ttl.is_zero() || args.ttl > MAX_LINK_TTL {
        anyhow::bail!("--ttl: use 1s to 24h");
    }
    causeflow_shared::host::embedded::validate_public_url(&args.public_url)
        .map_err(anyhow::Error::msg)?;
    let sessions = open_sessions(&args.target).await?;
    let url = create_sign_in_link(sessions.as_ref(), &args.tenant, args.ttl, &args.public_url)
        .await
        .context("recording the sign-in link")?;
    println!("{url}");
    eprintln!(
        "Open it within {} to sign in to tenant {:?}; it works once.",
        humanize(args.ttl),
        args.tenant
    );
    Ok(())
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

#[derive(Subcommand)]
pub enum SessionsCmd {
    /// Sign out every console session of a tenant, and void its unused sign-in links.
    Revoke {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        target: Target,
    },
}

pub async fn sessions(cmd: SessionsCmd) -> Result<()> {
    match cmd {
        SessionsCmd::Revoke { tenant, target } => {
            let n = open_sessions(&target).await?.revoke_tenant(&tenant).await?;
            println!("signed out {n} console session(s) of tenant {tenant:?}");
            Ok(())
        }
    }
}
