//! Ingest Lambda: the same axum router as `causeflow serve`, behind API Gateway (HTTP API,
//! payload format 2.0), with DynamoDB and SQS behind its ports. Configuration and AWS clients
//! are built once, at init; every request then only runs the shared router.

use causeflow_shared::aws::{sdk_config, IngestConfig};
use causeflow_shared::host::lambda::{ingest_state, with_metrics};
use causeflow_shared::http::router;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    // JSON logs when the function's LoggingConfig says so (template.yaml does).
    lambda_http::tracing::init_default_subscriber();
    let config = IngestConfig::from_env()?;
    let sdk = sdk_config().await;
    lambda_http::run(with_metrics(router(ingest_state(&sdk, &config)), "ingest")).await
}
