//! The AWS adapters behind the same ports as the embedded ones: DynamoDB for keys, tenants,
//! dedup records, incidents and dispatch markers; SQS for the alert queue; SNS for agent tasks.
//! Only this module names `aws_sdk_*` types. Clients honour `AWS_ENDPOINT_URL`, which is how the
//! tests point them at an emulator on loopback.

mod config;
mod directory;
mod incidents;
mod item;
mod ledger;
mod subscriptions;

use std::sync::Arc;

pub use config::{ConfigError, IngestConfig, TriageConfig};
pub use directory::DynamoDirectory;
pub use incidents::{DynamoIncidents, SnsDispatcher};
pub use ledger::{dedup_pk, DynamoLedger};
pub use subscriptions::{DynamoSubscriptions, SnsApiConfirmer};

pub use aws_config::SdkConfig;
pub use aws_sdk_dynamodb::Client as DynamoClient;

use crate::http::{AppState, RateLimit};
use crate::triage::Triage;

/// Loads the shared AWS configuration (region, credentials, endpoint) once per process.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// Everything the ingest Lambda's router needs, built once at init.
pub fn ingest_state(sdk: &aws_config::SdkConfig, config: &IngestConfig) -> Arc<AppState> {
    let https = crate::sns::ReqwestGet::new().expect("an HTTPS client builds");
    ingest_state_with(sdk, config, Arc::new(https))
}

/// Like [`ingest_state`] with the HTTPS client (SNS certificates) injected.
pub fn ingest_state_with(
    sdk: &aws_config::SdkConfig,
    config: &IngestConfig,
    https: Arc<dyn crate::sns::HttpsGet>,
) -> Arc<AppState> {
    let ddb = aws_sdk_dynamodb::Client::new(sdk);
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let mut state = AppState::new(
        Arc::new(DynamoDirectory::new(
            ddb.clone(),
            &config.keys_table,
            &config.tenants_table,
        )),
        Arc::new(DynamoLedger::new(
            ddb.clone(),
            sqs,
            &config.dedup_table,
            &config.alert_queue_url,
            config.dedup,
        )),
        Arc::new(DynamoIncidents::new(ddb.clone(), &config.incidents_table)),
        RateLimit {
            per_sec: config.rate_limit_per_sec,
            burst: config.rate_limit_per_sec * 2.0,
        },
    );
    state.sns = Some(crate::http::SnsSupport {
        certs: crate::sns::CertCache::new(https),
        confirmer: Arc::new(SnsApiConfirmer::new(sdk)),
        subscriptions: Arc::new(DynamoSubscriptions::new(ddb, &config.subscriptions_table)),
    });
    Arc::new(state)
}

/// The triage step wired to DynamoDB and SNS, built once at init.
pub fn triage(sdk: &aws_config::SdkConfig, config: &TriageConfig) -> Triage {
    let ddb = aws_sdk_dynamodb::Client::new(sdk);
    Triage {
        incidents: Arc::new(DynamoIncidents::new(ddb.clone(), &config.incidents_table)),
        // Keys are not read by triage; only the tenant settings table is.
        directory: Arc::new(DynamoDirectory::new(ddb.clone(), "", &config.tenants_table)),
        dispatcher: Arc::new(SnsDispatcher::new(
            ddb,
            aws_sdk_sns::Client::new(sdk),
            &config.dispatch_table,
            &config.agent_topic_arn,
        )),
    }
}
