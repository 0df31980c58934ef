//! `causeflow incidents list`.

use anyhow::Result;
use causeflow_shared::model::IncidentStatus;
use causeflow_shared::ports::IncidentQuery;
use clap::Subcommand;

use super::stores::open_incidents;
use super::Target;

#[derive(Subcommand)]
pub enum IncidentsCmd {
    /// List a tenant's incidents, newest first.
    List {
        #[arg(long)]
        tenant: String,
        /// open, acknowledged or resolved.
        #[arg(long, value_parser = ["open", "acknowledged", "resolved"])]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: Target,
    },
}

pub async fn incidents(cmd: IncidentsCmd) -> Result<()> {
    let IncidentsCmd::List {
        tenant,
        status,
        limit,
        json,
        store,
    } = cmd;
    let store = open_incidents(&store).await?;
    let query = IncidentQuery {
        status: status.as_deref().and_then(IncidentStatus::parse),
        limit: limit.clamp(1, 1000),
        cursor: None,
        ..Default::default()
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
