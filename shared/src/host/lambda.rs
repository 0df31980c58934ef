//! The Lambda host's wiring: the same router and triage as `causeflow serve`
//! ([`super::embedded`]), with the AWS adapters behind the ports. The functions in `functions/`
//! call these once, at init: ingest and triage, and the console (with the `console` feature).

use std::sync::Arc;

use crate::aws::{
    DynamoDedupKeys, DynamoDirectory, DynamoIncidents, DynamoLedger, DynamoSubscriptions,
    DynamoTenants, IngestConfig, SnsApiConfirmer, SnsDispatcher, TriageConfig,
};
use crate::http::{AppState, RateLimit};
use crate::triage::Triage;

/// Installs the CloudWatch EMF recorder for `function` and flushes what each request recorded
/// as EMF lines in the function's log once the request is answered: metrics without a
/// CloudWatch API call (docs/operations.md#metrics).
#[cfg(feature = "emf")]
pub fn with_metrics(router: axum::Router, function: &'static str) -> axum::Router {
    match crate::telemetry::emf::install(function) {
        Ok(collector) => crate::telemetry::emf::layer(router, collector),
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed; no EMF metrics");
            router
        }
    }
}

/// Everything the ingest Lambda's router needs, built once at init.
pub fn ingest_state(sdk: &aws_config::SdkConfig, config: &IngestConfig) -> Arc<AppState> {
    ingest_state_with(sdk, config, Arc::new(crate::sns::ReqwestGet::new()))
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
        Arc::new(
            DynamoIncidents::new(ddb.clone(), &config.incidents_table)
                .with_duplicate_counts(&config.dedup_table),
        ),
        RateLimit {
            per_sec: config.rate_limit_per_sec,
            burst: config.rate_limit_per_sec * 2.0,
        },
    );
    state.max_alerts = config.max_alerts;
    // A Lambda is frozen between invocations: a write left running after the answer might
    // never happen, so here it is awaited (once a minute per key, bounded).
    state.usage = Some(crate::http::UsageRecorder::awaited(Arc::new(
        crate::aws::DynamoKeyUsage::new(ddb.clone(), &config.dedup_table),
    )));
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
        settings: Arc::new(DynamoTenants::new(ddb.clone(), &config.tenants_table)),
        dispatcher: Arc::new(SnsDispatcher::new(
            ddb.clone(),
            aws_sdk_sns::Client::new(sdk),
            &config.dispatch_table,
            &config.agent_topic_arn,
        )),
        keys: Arc::new(DynamoDedupKeys::new(ddb.clone(), &config.dedup_table)),
        max_receives: config.max_receives,
    }
}

/// Everything the console Lambda's router needs, built once at init. "Send test alert" goes
/// through [`DynamoLedger`], so a test alert takes the same dedup and queue path as a webhook and
/// triage records it.
#[cfg(feature = "console")]
pub fn console_state(
    sdk: &aws_config::SdkConfig,
    config: &crate::aws::ConsoleLambdaConfig,
) -> Arc<crate::console::ConsoleState> {
    use crate::console::{ConsoleConfig, ConsoleState, HostKind, LiveMode};
    let ddb = aws_sdk_dynamodb::Client::new(sdk);
    Arc::new(ConsoleState {
        directory: Arc::new(DynamoDirectory::new(
            ddb.clone(),
            &config.keys_table,
            &config.tenants_table,
        )),
        incidents: Arc::new(
            DynamoIncidents::new(ddb.clone(), &config.incidents_table)
                .with_duplicate_counts(&config.dedup_table),
        ),
        ledger: Arc::new(DynamoLedger::new(
            ddb.clone(),
            aws_sdk_sqs::Client::new(sdk),
            &config.dedup_table,
            &config.alert_queue_url,
            config.dedup,
        )),
        sessions: Arc::new(crate::aws::DynamoSessions::new(
            ddb.clone(),
            &config.sessions_table,
        )),
        subscriptions: Arc::new(DynamoSubscriptions::new(
            ddb.clone(),
            &config.subscriptions_table,
        )),
        tasks: Arc::new(crate::aws::DynamoTaskLog::new(
            ddb.clone(),
            &config.incidents_table,
            &config.dispatch_table,
        )),
        usage: Some(Arc::new(crate::aws::DynamoKeyUsage::new(
            ddb,
            &config.dedup_table,
        ))),
        runtime: Default::default(),
        config: ConsoleConfig {
            public_url: config.public_url.clone(),
            // API Gateway and Lambda answer each request and close it: no event stream.
            live: LiveMode::Poll,
            rate_limit: config.rate_limit(),
            host: HostKind::Aws,
        },
    })
}
