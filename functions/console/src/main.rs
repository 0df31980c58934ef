//! Console Lambda: the console's pages and its management API (`/console/...` and
//! `/v1/tenants/{t}/keys`, `agents`, `topics`, `subscriptions`, `test-alert`) behind API Gateway
//! (HTTP API, payload format 2.0), with DynamoDB and SQS behind the same ports as
//! `causeflow serve`'s console. Configuration and AWS clients are built once, at init; every
//! request then only runs the shared router.

use causeflow_shared::aws::{sdk_config, ConsoleLambdaConfig};
use causeflow_shared::console::router;
use causeflow_shared::host::lambda::{console_state, with_metrics};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    // JSON logs when the function's LoggingConfig says so (template.yaml does).
    lambda_http::tracing::init_default_subscriber();
    let config = ConsoleLambdaConfig::from_env()?;
    let sdk = sdk_config().await;
    lambda_http::run(with_metrics(
        router(console_state(&sdk, &config)),
        "console",
    ))
    .await
}
