//! Typed configuration of the Lambda functions, read once from the environment that
//! `template.yaml` sets.

use std::time::Duration;

use crate::dedup::DedupConfig;

/// A required variable is missing or malformed.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}: {problem}")]
pub struct ConfigError {
    pub name: &'static str,
    pub problem: String,
}

fn required(name: &'static str) -> Result<String, ConfigError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(ConfigError {
            name,
            problem: "is not set".into(),
        }),
    }
}

fn number(name: &'static str, default: f64) -> Result<f64, ConfigError> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v.trim().parse().map_err(|_| ConfigError {
            name,
            problem: format!("{v:?} is not a number"),
        }),
    }
}

/// The ingest function's settings.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub keys_table: String,
    pub tenants_table: String,
    pub dedup_table: String,
    pub incidents_table: String,
    pub alert_queue_url: String,
    pub subscriptions_table: String,
    pub rate_limit_per_sec: f64,
    pub dedup: DedupConfig,
    /// Alerts one request may carry.
    pub max_alerts: usize,
}

impl IngestConfig {
    /// The variables this function reads (checked against `template.yaml` by the tests).
    pub const VARIABLES: [&'static str; 9] = [
        "MAX_ALERTS_PER_REQUEST",
        "KEYS_TABLE",
        "SUBSCRIPTIONS_TABLE",
        "TENANTS_TABLE",
        "DEDUP_TABLE",
        "INCIDENTS_TABLE",
        "ALERT_QUEUE_URL",
        "RATE_LIMIT_PER_SEC",
        "DEDUP_TTL_HOURS",
    ];

    pub fn from_env() -> Result<Self, ConfigError> {
        let config = IngestConfig {
            keys_table: required("KEYS_TABLE")?,
            tenants_table: required("TENANTS_TABLE")?,
            dedup_table: required("DEDUP_TABLE")?,
            incidents_table: required("INCIDENTS_TABLE")?,
            alert_queue_url: required("ALERT_QUEUE_URL")?,
            subscriptions_table: required("SUBSCRIPTIONS_TABLE")?,
            rate_limit_per_sec: number("RATE_LIMIT_PER_SEC", 100.0)?,
            dedup: dedup_from_env()?,
            max_alerts: number(
                "MAX_ALERTS_PER_REQUEST",
                crate::http::DEFAULT_MAX_ALERTS as f64,
            )? as usize,
        };
        config.validate()?;
        Ok(config)
    }

    /// Refuses settings that cannot work, at init rather than as a panic under load.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_rate(self.rate_limit_per_sec)?;
        if !(1..=100_000).contains(&self.max_alerts) {
            return Err(ConfigError {
                name: "MAX_ALERTS_PER_REQUEST",
                problem: format!("{}: use 1 to 100000", self.max_alerts),
            });
        }
        check_dedup(&self.dedup)
    }
}

/// `DEDUP_TTL_HOURS` (default one week) as the dedup settings; ingest and the console's test
/// alert admit through the same ledger, so both read it the same way.
fn dedup_from_env() -> Result<DedupConfig, ConfigError> {
    Ok(DedupConfig {
        ttl: Duration::try_from_secs_f64(number("DEDUP_TTL_HOURS", 168.0)? * 3600.0).map_err(
            |e| ConfigError {
                name: "DEDUP_TTL_HOURS",
                problem: e.to_string(),
            },
        )?,
        ..DedupConfig::default()
    })
}

/// The per-tenant limit as the router builds it: `per_sec`, with twice that as the burst.
fn rate_limit(per_sec: f64) -> crate::http::RateLimit {
    crate::http::RateLimit {
        per_sec,
        burst: per_sec * 2.0,
    }
}

fn check_rate(per_sec: f64) -> Result<(), ConfigError> {
    rate_limit(per_sec)
        .validate()
        .map_err(|problem| ConfigError {
            name: "RATE_LIMIT_PER_SEC",
            problem,
        })
}

fn check_dedup(dedup: &DedupConfig) -> Result<(), ConfigError> {
    if dedup.ttl.is_zero() || dedup.ttl > Duration::from_secs(8784 * 3600) {
        return Err(ConfigError {
            name: "DEDUP_TTL_HOURS",
            problem: "use 1 to 8784 hours (one year)".into(),
        });
    }
    Ok(())
}

/// The triage function's settings.
#[derive(Debug, Clone)]
pub struct TriageConfig {
    pub tenants_table: String,
    pub incidents_table: String,
    pub dispatch_table: String,
    pub agent_topic_arn: String,
    /// Where a dead-lettered alert's key is released.
    pub dedup_table: String,
    /// The alert queue's `maxReceiveCount`: a message failing this receive is dead-lettered.
    pub max_receives: u32,
}

impl TriageConfig {
    /// The variables this function reads (checked against `template.yaml` by the tests).
    pub const VARIABLES: [&'static str; 6] = [
        "TENANTS_TABLE",
        "INCIDENTS_TABLE",
        "DISPATCH_TABLE",
        "AGENT_TOPIC_ARN",
        "DEDUP_TABLE",
        "MAX_RECEIVE_COUNT",
    ];

    pub fn from_env() -> Result<Self, ConfigError> {
        let config = TriageConfig {
            tenants_table: required("TENANTS_TABLE")?,
            incidents_table: required("INCIDENTS_TABLE")?,
            dispatch_table: required("DISPATCH_TABLE")?,
            agent_topic_arn: required("AGENT_TOPIC_ARN")?,
            dedup_table: required("DEDUP_TABLE")?,
            max_receives: number("MAX_RECEIVE_COUNT", crate::triage::MAX_RECEIVES as f64)? as u32,
        };
        config.validate()?;
        Ok(config)
    }

    /// Refuses settings that cannot work, at init rather than as wrong behaviour later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // SQS's maxReceiveCount is 1 to 1000; a 0 would release keys on the first failure.
        if !(1..=1000).contains(&self.max_receives) {
            return Err(ConfigError {
                name: "MAX_RECEIVE_COUNT",
                problem: format!(
                    "{}: use the alert queue's maxReceiveCount (1 to 1000)",
                    self.max_receives
                ),
            });
        }
        Ok(())
    }
}

/// The console function's settings: the management API and pages need the keys, tenants,
/// incidents, dispatch-marker, subscriptions and sessions tables; "Send test alert" admits
/// through the dedup table and the alert queue like any webhook.
#[derive(Debug, Clone)]
pub struct ConsoleLambdaConfig {
    pub keys_table: String,
    pub tenants_table: String,
    pub dedup_table: String,
    pub alert_queue_url: String,
    pub incidents_table: String,
    pub dispatch_table: String,
    pub subscriptions_table: String,
    pub sessions_table: String,
    /// The URL senders reach the stack at (the HTTP API's), without a trailing `/`. Unset:
    /// webhook URLs are built from each request's `Host`.
    pub public_url: Option<String>,
    pub rate_limit_per_sec: f64,
    pub dedup: DedupConfig,
}

impl ConsoleLambdaConfig {
    /// The variables this function reads (checked against `template.yaml` by the tests).
    pub const VARIABLES: [&'static str; 11] = [
        "KEYS_TABLE",
        "TENANTS_TABLE",
        "DEDUP_TABLE",
        "ALERT_QUEUE_URL",
        "INCIDENTS_TABLE",
        "DISPATCH_TABLE",
        "SUBSCRIPTIONS_TABLE",
        "SESSIONS_TABLE",
        "PUBLIC_URL",
        "RATE_LIMIT_PER_SEC",
        "DEDUP_TTL_HOURS",
    ];

    pub fn from_env() -> Result<Self, ConfigError> {
        let config = ConsoleLambdaConfig {
            keys_table: required("KEYS_TABLE")?,
            tenants_table: required("TENANTS_TABLE")?,
            dedup_table: required("DEDUP_TABLE")?,
            alert_queue_url: required("ALERT_QUEUE_URL")?,
            incidents_table: required("INCIDENTS_TABLE")?,
            dispatch_table: required("DISPATCH_TABLE")?,
            subscriptions_table: required("SUBSCRIPTIONS_TABLE")?,
            sessions_table: required("SESSIONS_TABLE")?,
            public_url: std::env::var("PUBLIC_URL")
                .ok()
                .map(|u| u.trim().trim_end_matches('/').to_owned())
                .filter(|u| !u.is_empty()),
            rate_limit_per_sec: number("RATE_LIMIT_PER_SEC", 100.0)?,
            dedup: dedup_from_env()?,
        };
        config.validate()?;
        Ok(config)
    }

    /// The per-tenant rate limit, as ingest applies it.
    pub fn rate_limit(&self) -> crate::http::RateLimit {
        rate_limit(self.rate_limit_per_sec)
    }

    /// Refuses settings that cannot work, at init rather than as wrong pages later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_rate(self.rate_limit_per_sec)?;
        check_dedup(&self.dedup)?;
        if let Some(url) = &self.public_url {
            // The console prints webhook URLs under it: only an absolute http(s) URL with a host
            // and nothing after the path makes working ones.
            let ok = reqwest::Url::parse(url).is_ok_and(|u| {
                matches!(u.scheme(), "https" | "http")
                    && u.host_str().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none()
            });
            if !ok {
                return Err(ConfigError {
                    name: "PUBLIC_URL",
                    problem: format!(
                        "{url:?}: use an absolute http(s) URL such as https://alerts.example.com"
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingest() -> IngestConfig {
        IngestConfig {
            keys_table: "k".into(),
            tenants_table: "t".into(),
            dedup_table: "d".into(),
            incidents_table: "i".into(),
            alert_queue_url: "q".into(),
            subscriptions_table: "s".into(),
            rate_limit_per_sec: 100.0,
            dedup: DedupConfig::default(),
            max_alerts: 500,
        }
    }

    #[test]
    fn settings_that_cannot_work_are_refused_at_init() {
        assert!(ingest().validate().is_ok());
        let refused = |c: IngestConfig| c.validate().unwrap_err().name;
        assert_eq!(
            refused(IngestConfig {
                rate_limit_per_sec: 1e-300,
                ..ingest()
            }),
            "RATE_LIMIT_PER_SEC"
        );
        assert_eq!(
            refused(IngestConfig {
                max_alerts: 0,
                ..ingest()
            }),
            "MAX_ALERTS_PER_REQUEST"
        );
        assert_eq!(
            refused(IngestConfig {
                dedup: DedupConfig {
                    ttl: Duration::from_secs(9000 * 3600),
                    ..DedupConfig::default()
                },
                ..ingest()
            }),
            "DEDUP_TTL_HOURS"
        );
        let triage = |max_receives| TriageConfig {
            tenants_table: "t".into(),
            incidents_table: "i".into(),
            dispatch_table: "d".into(),
            agent_topic_arn: "a".into(),
            dedup_table: "d".into(),
            max_receives,
        };
        assert!(triage(5).validate().is_ok());
        assert_eq!(triage(0).validate().unwrap_err().name, "MAX_RECEIVE_COUNT");
    }

    fn console(public_url: Option<&str>) -> ConsoleLambdaConfig {
        ConsoleLambdaConfig {
            keys_table: "k".into(),
            tenants_table: "t".into(),
            dedup_table: "d".into(),
            alert_queue_url: "q".into(),
            incidents_table: "i".into(),
            dispatch_table: "x".into(),
            subscriptions_table: "s".into(),
            sessions_table: "c".into(),
            public_url: public_url.map(str::to_owned),
            rate_limit_per_sec: 100.0,
            dedup: DedupConfig::default(),
        }
    }

    #[test]
    fn console_settings_that_cannot_work_are_refused_at_init() {
        assert!(console(None).validate().is_ok());
        assert!(
            console(Some("https://abc.execute-api.eu-west-1.amazonaws.com"))
                .validate()
                .is_ok()
        );
        assert!(console(Some("http://127.0.0.1:9000/base"))
            .validate()
            .is_ok());
        for bad in [
            "abc.example.com",
            "ftp://x.example",
            "https://x.example/?a=1",
            "https://",
        ] {
            assert_eq!(
                console(Some(bad)).validate().unwrap_err().name,
                "PUBLIC_URL",
                "{bad}"
            );
        }
        let refused = |c: ConsoleLambdaConfig| c.validate().unwrap_err().name;
        assert_eq!(
            refused(ConsoleLambdaConfig {
                rate_limit_per_sec: -1.0,
                ..console(None)
            }),
            "RATE_LIMIT_PER_SEC"
        );
        assert_eq!(
            refused(ConsoleLambdaConfig {
                dedup: DedupConfig {
                    ttl: Duration::ZERO,
                    ..DedupConfig::default()
                },
                ..console(None)
            }),
            "DEDUP_TTL_HOURS"
        );
    }
}
