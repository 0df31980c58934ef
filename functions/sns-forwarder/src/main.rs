//! The sample SNS forwarder Lambda (examples/cloudwatch-forwarder). Reads the CauseFlow URL from
//! the environment and the API key and webhook secret from Secrets Manager, once, at init.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde::Deserialize;
use sns_forwarder::Forwarder;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Credentials {
    api_key: String,
    webhook_secret: String,
}

fn env(name: &str) -> Result<String, Error> {
    std::env::var(name).map_err(|_| format!("environment variable {name} is not set").into())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let url = env("CAUSEFLOW_WEBHOOK_URL")?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let secret = aws_sdk_secretsmanager::Client::new(&sdk)
        .get_secret_value()
        .secret_id(env("CAUSEFLOW_SECRET_ARN")?)
        .send()
        .await?;
    let creds: Credentials = serde_json::from_str(secret.secret_string().unwrap_or_default())
        .map_err(|e| format!("the secret must be {{\"apiKey\", \"webhookSecret\"}}: {e}"))?;
    let forwarder = Forwarder::new(&url, &creds.api_key, &creds.webhook_secret);
    let forwarder = &forwarder;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<aws_lambda_events::event::sns::SnsEvent>| async move {
            forwarder.forward(event.payload).await.map_err(Error::from)
        },
    ))
    .await
}
