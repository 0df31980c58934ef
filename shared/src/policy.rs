//! Triage policy: which agents investigate an incident of a given severity
//! (docs/contract.md#triage-and-agents), and the per-tenant override of that table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Provider, Severity};

/// The agents docs/contract.md#triage-and-agents dispatches for `severity` on an alert from `provider`.
pub fn default_agents(provider: Provider, severity: Severity) -> Vec<&'static str> {
    let mut agents = match severity {
        Severity::Critical => vec!["logs", "metrics", "traces", "deploys", "infrastructure"],
        Severity::High => vec!["logs", "metrics", "deploys"],
        // "logs (errors for sentry, metrics for cloudwatch)": the provider's own signal replaces
        // logs. Alertmanager alerts are Prometheus metrics too.
        Severity::Medium => match provider {
            Provider::Sentry => vec!["errors"],
            Provider::Cloudwatch | Provider::Alertmanager => vec!["metrics"],
            _ => vec!["logs"],
        },
        Severity::Low | Severity::Info => vec![],
    };
    match (severity, provider) {
        (Severity::Critical | Severity::High, Provider::Sentry) => agents.push("errors"),
        (Severity::High, Provider::Cloudwatch) => agents.push("infrastructure"),
        _ => {}
    }
    agents
}

/// A tenant's replacement for the severity -> agents table. Severities it does not name keep the
/// default row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentOverrides(pub BTreeMap<Severity, Vec<String>>);

impl AgentOverrides {
    /// The agents for an alert of this tenant: the override row where there is one, else the
    /// default table (docs/contract.md#triage-and-agents).
    pub fn agents_for(&self, provider: Provider, severity: Severity) -> Vec<String> {
        match self.0.get(&severity) {
            Some(agents) => agents.clone(),
            None => default_agents(provider, severity)
                .into_iter()
                .map(str::to_owned)
                .collect(),
        }
    }
}

/// Agent names are used as SNS message attributes and in filter policies: keep them plain.
pub fn valid_agent_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_spec() {
        use Provider::*;
        use Severity::*;
        assert_eq!(
            default_agents(Datadog, Critical),
            ["logs", "metrics", "traces", "deploys", "infrastructure"]
        );
        assert_eq!(
            default_agents(Sentry, Critical),
            [
                "logs",
                "metrics",
                "traces",
                "deploys",
                "infrastructure",
                "errors"
            ]
        );
        assert_eq!(
            default_agents(Sentry, High),
            ["logs", "metrics", "deploys", "errors"]
        );
        assert_eq!(
            default_agents(Cloudwatch, High),
            ["logs", "metrics", "deploys", "infrastructure"]
        );
        assert_eq!(default_agents(Grafana, Medium), ["logs"]);
        assert_eq!(default_agents(Sentry, Medium), ["errors"]);
        assert_eq!(default_agents(Cloudwatch, Medium), ["metrics"]);
        assert_eq!(default_agents(Alertmanager, Medium), ["metrics"]);
        assert_eq!(default_agents(Pagerduty, Medium), ["logs"]);
        assert_eq!(
            default_agents(Pagerduty, High),
            ["logs", "metrics", "deploys"]
        );
        assert!(default_agents(Generic, Low).is_empty());
        assert!(default_agents(Generic, Info).is_empty());
    }

    #[test]
    fn overrides_replace_only_their_rows() {
        let mut o = AgentOverrides::default();
        o.0.insert(Severity::Low, vec!["logs".into()]);
        assert_eq!(o.agents_for(Provider::Generic, Severity::Low), ["logs"]);
        assert_eq!(o.agents_for(Provider::Generic, Severity::Medium), ["logs"]);
        assert!(valid_agent_name("infra-2"));
        assert!(!valid_agent_name("Logs"));
    }

    /// The cache behind docs/operations.md's "within 10 s" (AWS) and "within 1 s" (serve): an
    /// entry serves until its TTL, `forget` drops it at once, and it never holds more than
    /// `MAX_TENANTS` tenants.
    #[test]
    fn overrides_cache_expires_forgets_and_stays_bounded() {
        let mut low = AgentOverrides::default();
        low.0.insert(Severity::Low, vec!["logs".into()]);

        let cache = OverridesCache::new(std::time::Duration::from_secs(3600));
        assert!(cache.get("t").is_none());
        cache.put("t", &low);
        assert_eq!(cache.get("t"), Some(low.clone()));
        cache.forget("t");
        assert!(cache.get("t").is_none(), "forgotten at once");

        // An entry older than the TTL is not served (a zero TTL: every entry is).
        let expired = OverridesCache::new(std::time::Duration::ZERO);
        expired.put("t", &low);
        assert!(expired.get("t").is_none());

        for n in 0..OverridesCache::MAX_TENANTS + 5 {
            cache.put(&format!("tenant-{n}"), &low);
            assert!(cache.map.lock().unwrap().len() <= OverridesCache::MAX_TENANTS);
        }
        assert_eq!(cache.get("tenant-10004"), Some(low));
    }
}

/// Tenants' agent tables as triage last read them, reused for a short time: triage asks once
/// per alert, and each ask was a read (a DynamoDB GetItem per alert on AWS). Bounded: past
/// `MAX_TENANTS` entries it starts over.
#[derive(Debug)]
pub struct OverridesCache {
    ttl: std::time::Duration,
    map: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, AgentOverrides)>>,
}

impl OverridesCache {
    const MAX_TENANTS: usize = 10_000;

    pub fn new(ttl: std::time::Duration) -> Self {
        OverridesCache {
            ttl,
            map: Default::default(),
        }
    }

    /// The table read less than the TTL ago, if any.
    pub fn get(&self, tenant: &str) -> Option<AgentOverrides> {
        let map = self.map.lock().expect("overrides cache");
        map.get(tenant)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, o)| o.clone())
    }

    pub fn put(&self, tenant: &str, overrides: &AgentOverrides) {
        let mut map = self.map.lock().expect("overrides cache");
        if map.len() >= Self::MAX_TENANTS {
            map.clear();
        }
        map.insert(
            tenant.to_owned(),
            (std::time::Instant::now(), overrides.clone()),
        );
    }

    /// Drops a tenant's entry after this process changed its table.
    pub fn forget(&self, tenant: &str) {
        self.map.lock().expect("overrides cache").remove(tenant);
    }
}
