//! `causeflow tenants …`: agent overrides and SNS topic allow-lists.

use anyhow::{bail, Context, Result};
use causeflow_shared::model::Severity;
use causeflow_shared::policy::{valid_agent_name, AgentOverrides};
use clap::Subcommand;

use super::stores::open_directory;
use super::Target;

#[derive(Subcommand)]
pub enum TenantsCmd {
    /// Let SNS messages from this topic post CloudWatch alarms for the tenant without credentials
    /// (their SNS signature is still verified).
    AllowTopic {
        #[arg(long)]
        tenant: String,
        /// arn:aws:sns:<region>:<account>:<topic>
        #[arg(long)]
        topic: String,
        #[command(flatten)]
        store: Target,
    },
    /// Remove a topic from the tenant's allow-list.
    DisallowTopic {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        topic: String,
        #[command(flatten)]
        store: Target,
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
        store: Target,
    },
}

/// Adds (`allow`) or removes an SNS topic on the tenant's allow-list.
async fn set_topic(store: &Target, tenant: &str, topic: &str, allow: bool) -> Result<()> {
    open_directory(store)
        .await?
        .allow_topic(tenant, topic, allow)
        .await?;
    if allow {
        println!("SNS topic {topic} may now post CloudWatch alarms for tenant {tenant}.");
    } else {
        println!("SNS topic {topic} is no longer allowed for tenant {tenant}.");
    }
    Ok(())
}

pub async fn tenants(cmd: TenantsCmd) -> Result<()> {
    let cmd = match cmd {
        TenantsCmd::AllowTopic {
            tenant,
            topic,
            store,
        } => return set_topic(&store, &tenant, &topic, true).await,
        TenantsCmd::DisallowTopic {
            tenant,
            topic,
            store,
        } => return set_topic(&store, &tenant, &topic, false).await,
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
