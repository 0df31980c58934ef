//! Triage Lambda: SQS event source with `ReportBatchItemFailures`; DynamoDB and SNS behind the
//! shared triage's ports. Configuration and clients are built once, at init.

use causeflow_shared::aws::{sdk_config, TriageConfig};
use causeflow_shared::host::lambda::triage;
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = TriageConfig::from_env()?;
    let triage = triage(&sdk_config().await, &config);
    let triage = &triage;
    // Metrics as EMF lines in the log, flushed after each batch (docs/operations.md#metrics).
    let metrics = causeflow_shared::telemetry::emf::install("triage")?;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<aws_lambda_events::event::sqs::SqsEvent>| async move {
            let answer = ::triage::handle(event.payload, triage).await;
            causeflow_shared::telemetry::emf::flush(metrics);
            Ok::<_, lambda_runtime::Error>(answer)
        },
    ))
    .await
}
