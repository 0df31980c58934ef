//! The AWS adapters behind the same ports as the embedded ones: DynamoDB for keys, tenants,
//! dedup records, incidents, dispatch markers and console sessions; SQS for the alert queue; SNS
//! for agent tasks. Only this module names `aws_sdk_*` types. Clients honour `AWS_ENDPOINT_URL`,
//! which is how the tests point them at an emulator on loopback.

mod config;
mod deadletters;
#[cfg(feature = "devstack")]
pub mod devstack;
mod directory;
mod duplicates;
mod incidents;
mod item;
mod ledger;
mod sessions;
mod subscriptions;
mod usage;

pub use config::{ConfigError, ConsoleLambdaConfig, IngestConfig, TriageConfig};
pub use deadletters::SqsDeadLetters;
pub use directory::{DynamoDirectory, DynamoTenants};
pub use incidents::{DynamoIncidents, DynamoTaskLog, SnsDispatcher};
pub use ledger::{dedup_pk, DynamoDedupKeys, DynamoLedger};
pub use sessions::DynamoSessions;
pub use subscriptions::{DynamoSubscriptions, SnsApiConfirmer};
pub use usage::DynamoKeyUsage;

pub use aws_config::SdkConfig;
pub use aws_sdk_dynamodb::Client as DynamoClient;
pub use aws_sdk_sqs::Client as SqsClient;

/// Loads the shared AWS configuration (region, credentials, endpoint) once per process.
///
/// Inside Lambda the region and the function role's credentials are always in the environment,
/// so only those providers are built: the full default chain also builds the profile, SSO, web
/// identity, ECS and IMDS providers, which costs init time and is never used there.
pub async fn sdk_config() -> aws_config::SdkConfig {
    let loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    let on_lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
        && std::env::var_os("AWS_ACCESS_KEY_ID").is_some();
    if on_lambda {
        loader
            .http_client(aws_endpoints_https_client())
            .credentials_provider(
                aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
            )
            .region(aws_config::environment::EnvironmentVariableRegionProvider::new())
            .load()
            .await
    } else {
        loader.load().await
    }
}

/// The roots AWS service endpoints chain to (Amazon Root CA 1-4 and the Starfield Services root
/// they are cross-signed by), as published by Amazon Trust Services.
const AWS_ROOTS: &[u8] = include_bytes!("aws-roots.pem");

/// An HTTPS client that trusts only the roots AWS endpoints use. The default one loads the
/// whole system trust store (hundreds of files) when a client is built, which was most of the
/// functions' init time; inside Lambda every endpoint is an AWS one.
fn aws_endpoints_https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls;
    let trust = tls::TrustStore::empty()
        .with_native_roots(false)
        .with_pem_certificate(AWS_ROOTS);
    let context = tls::TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .expect("the embedded AWS roots are valid PEM");
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_aws_roots_parse_and_build_a_client() {
        let certs = x509_cert::Certificate::load_pem_chain(AWS_ROOTS).unwrap();
        assert_eq!(certs.len(), 5);
        let subjects: Vec<String> = certs
            .iter()
            .map(|c| c.tbs_certificate.subject.to_string())
            .collect();
        assert!(
            subjects.iter().any(|s| s.contains("Amazon Root CA 1")),
            "{subjects:?}"
        );
        let _ = aws_endpoints_https_client();
    }
}
