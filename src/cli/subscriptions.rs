//! `causeflow subscriptions list`: SNS subscriptions to tenants' CloudWatch endpoints.

use anyhow::Result;
use clap::Subcommand;

use super::stores::open_subscriptions;
use super::Target;

#[derive(Subcommand)]
pub enum SubscriptionsCmd {
    /// List a tenant's SNS subscriptions and their state (pending, confirmed, unsubscribed).
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: Target,
    },
}

pub async fn subscriptions(cmd: SubscriptionsCmd) -> Result<()> {
    let SubscriptionsCmd::List {
        tenant,
        json,
        store,
    } = cmd;
    let subs = open_subscriptions(&store).await?.list(&tenant).await?;
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
