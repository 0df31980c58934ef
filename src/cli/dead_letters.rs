//! `causeflow dead-letters …`: alerts triage gave up on, listed and redriven.

use std::time::Duration;

use anyhow::{bail, Result};
use causeflow_shared::deadletter::{list, redrive, DeadLetters};
use causeflow_shared::dedup::DedupConfig;
use causeflow_shared::ports::AlertLedger;
use causeflow_shared::sqlite::{SqliteLedger, SqliteQueue};
use clap::Subcommand;

use super::stores::open_db;
use super::Target;

#[derive(Subcommand)]
pub enum DeadLettersCmd {
    /// List dead-lettered alerts (they stay dead-lettered; on AWS, listed ones are hidden from
    /// other readers for a minute).
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        queue: Target,
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
        queue: Target,
    },
}

type DeadLetterStores = (Box<dyn DeadLetters>, Box<dyn AlertLedger>);

/// The dead letters and the ledger that re-admits them, on either host.
async fn open_dead_letters(queue: &Target, dedup: DedupConfig) -> Result<DeadLetterStores> {
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
async fn aws_dead_letters(queue: &Target, dedup: DedupConfig) -> Result<DeadLetterStores> {
    use causeflow_shared::aws::{DynamoLedger, SqsClient, SqsDeadLetters};
    let dlq = super::stores::needed(&queue.dlq_url, "--dlq-url", "ALERT_DLQ_URL")?;
    let sdk = causeflow_shared::aws::sdk_config().await;
    let sqs = SqsClient::new(&sdk);
    let letters = Box::new(SqsDeadLetters::new(sqs.clone(), dlq));
    // Listing needs only the dead-letter queue; a ledger without its table refuses to admit.
    let ledger = DynamoLedger::new(
        causeflow_shared::aws::DynamoClient::new(&sdk),
        sqs,
        queue.dedup_table.as_deref().unwrap_or_default(),
        queue.queue_url.as_deref().unwrap_or_default(),
        dedup,
    );
    Ok((letters, Box::new(ledger)))
}

#[cfg(not(feature = "aws"))]
async fn aws_dead_letters(_: &Target, _: DedupConfig) -> Result<DeadLetterStores> {
    bail!("this causeflow was built without AWS support: build it with `cargo build --release --features aws`")
}

pub async fn dead_letters(cmd: DeadLettersCmd) -> Result<()> {
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
