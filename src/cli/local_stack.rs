//! `causeflow local-stack`: the Lambda stack's resources in an AWS emulator on loopback
//! (`create`), and the SQS event source mapping that drives triage from the alert queue
//! (`pump`). `scripts/local-stack` runs both around `cargo lambda watch`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum LocalStackCmd {
    /// Create the template's tables, queues and topic in the emulator at AWS_ENDPOINT_URL
    /// (loopback only), store the development key for tenant demo, and write the functions'
    /// environment. Prints the resources as JSON. Running it again reuses what exists.
    Create {
        /// The SAM template whose resources to create.
        #[arg(long, default_value = "template.yaml")]
        template: PathBuf,
        /// Appended to each logical id to name the resource.
        #[arg(long, default_value = "local")]
        suffix: String,
        /// Where to write the functions' environment (KEY=VALUE lines, as `cargo lambda watch
        /// --env-file` reads them).
        #[arg(long)]
        env_file: PathBuf,
    },
    /// Receive from the alert queue in batches and invoke the triage function with each, deleting
    /// what it did not report as failed, as Lambda's SQS event source mapping does. Runs until
    /// interrupted.
    Pump {
        /// The alert queue.
        #[arg(long, env = "ALERT_QUEUE_URL")]
        queue_url: String,
        /// The triage function's Invoke API URL (`cargo lambda watch` serves
        /// `/2015-03-31/functions/triage/invocations`).
        #[arg(long)]
        function_url: String,
        /// Messages per invoke (the template's BatchSize).
        #[arg(long, default_value_t = 10)]
        batch_size: i32,
        /// Longest wait for one invoke, in seconds (the triage function's Timeout).
        #[arg(long, default_value_t = 30)]
        invoke_timeout: u64,
    },
}

#[cfg(feature = "aws")]
pub async fn local_stack(cmd: LocalStackCmd) -> Result<()> {
    imp::run(cmd).await
}

#[cfg(not(feature = "aws"))]
pub async fn local_stack(_: LocalStackCmd) -> Result<()> {
    anyhow::bail!(
        "this causeflow was built without AWS support: build it with `cargo build --features aws`"
    )
}

#[cfg(feature = "aws")]
mod imp {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    use std::time::Duration;

    use anyhow::{anyhow, Context, Result};
    use causeflow_shared::aws::devstack;
    use causeflow_shared::aws::{sdk_config, DynamoDirectory};
    use causeflow_shared::ports::KeyAdmin;
    use serde_json::Value;

    use super::LocalStackCmd;

    pub async fn run(cmd: LocalStackCmd) -> Result<()> {
        match cmd {
            LocalStackCmd::Create {
                template,
                suffix,
                env_file,
            } => create(&template, &suffix, &env_file).await,
            LocalStackCmd::Pump {
                queue_url,
                function_url,
                batch_size,
                invoke_timeout,
            } => pump(&queue_url, &function_url, batch_size, invoke_timeout).await,
        }
    }

    /// Environment variables the functions need besides the template's own, passed through from
    /// this process (the emulator's endpoint and its dummy credentials).
    const PASS_THROUGH: [&str; 5] = [
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_EC2_METADATA_DISABLED",
    ];

    async fn create(
        template_path: &std::path::Path,
        suffix: &str,
        env_file: &std::path::Path,
    ) -> Result<()> {
        devstack::require_loopback("causeflow local-stack")?;
        let sdk = sdk_config().await;
        let template = devstack::read_template(template_path)?;
        let refs = devstack::create_resources(&sdk, &template, suffix).await?;
        let mut env = BTreeMap::new();
        for function in ["IngestFunction", "TriageFunction"] {
            env.extend(devstack::function_env(&template, &refs, function)?);
        }
        for name in PASS_THROUGH {
            if let Ok(v) = std::env::var(name) {
                env.insert(name.to_owned(), v);
            }
        }
        let mut text = String::new();
        for (k, v) in &env {
            writeln!(text, "{k}={v}")?;
        }
        if let Some(dir) = env_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(env_file, text).with_context(|| format!("write {}", env_file.display()))?;

        let keys = refs
            .get("KeysTable")
            .ok_or_else(|| anyhow!("the template has no KeysTable"))?;
        let tenants = refs
            .get("TenantsTable")
            .ok_or_else(|| anyhow!("the template has no TenantsTable"))?;
        let stored = DynamoDirectory::new(
            causeflow_shared::aws::DynamoClient::new(&sdk),
            keys,
            tenants,
        )
        .store_key("demo", "development", &causeflow_shared::auth::dev_key())
        .await;
        match stored {
            // A second run over the same emulator finds it there already.
            Ok(()) | Err(causeflow_shared::error::StoreError::Invalid(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let refs: BTreeMap<_, _> = refs.into_iter().collect();
        println!("{}", serde_json::to_string_pretty(&refs)?);
        Ok(())
    }

    async fn pump(
        queue_url: &str,
        function_url: &str,
        batch: i32,
        invoke_timeout: u64,
    ) -> Result<()> {
        devstack::require_loopback("causeflow local-stack pump")?;
        let sqs = causeflow_shared::aws::SqsClient::new(&sdk_config().await);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(invoke_timeout))
            .build()?;
        // Looked up once: every event names it.
        let arn = devstack::queue_arn(&sqs, queue_url).await?;
        let stop = tokio::signal::ctrl_c();
        tokio::pin!(stop);
        eprintln!("pump: {queue_url} -> {function_url}, batches of {batch}");
        loop {
            let invoke = |event: Value| {
                let http = http.clone();
                async move {
                    let r = http
                        .post(function_url)
                        .json(&event)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    let status = r.status();
                    let body: Value = r.json().await.map_err(|e| e.to_string())?;
                    if !status.is_success() {
                        return Err(format!("{status}: {body}"));
                    }
                    // A function error comes back as 200 with errorType from some runtimes.
                    if body.get("errorType").is_some() {
                        return Err(body.to_string());
                    }
                    Ok(body)
                }
            };
            tokio::select! {
                _ = &mut stop => return Ok(()),
                round = devstack::pump_once(&sqs, queue_url, &arn, batch, 2, invoke) => {
                    match round {
                        Ok(r) if r.received > 0 => eprintln!(
                            "pump: {} message(s) triaged, {} left for redelivery",
                            r.received.saturating_sub(r.failed), r.failed
                        ),
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("pump: {e}");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        }
    }
}
