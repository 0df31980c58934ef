//! Tenants and API keys in SQLite: the key and tenant ports ([`ApiKeys`], [`TenantSettings`],
//! [`TopicAllowList`]) plus the management operations the CLI uses, and the SNS subscription
//! records. Every lookup reads the database, so keys created or revoked by another process take
//! effect on the next request.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::{now_ms, Db};
use crate::auth::{new_webhook_secret, IssuedKey};
use crate::error::StoreError;
use crate::policy::{AgentOverrides, OverridesCache};
use crate::ports::{
    ApiKeys, KeyAdmin, KeyRecord, KeySummary, Subscription, SubscriptionState, Subscriptions,
    TenantSettings, TopicAllowList,
};
use crate::validate::{check_tenant_id, check_topic_arn, clean_sentry_secret};

/// Tenants and keys stored in the embedded database.
#[derive(Clone)]
pub struct SqliteDirectory {
    db: Db,
    overrides: Arc<OverridesCache>,
}

/// How long triage reuses a tenant's agent table before reading it again. Changes made through
/// this process (the console) apply at once; `causeflow tenants` from another process within
/// this time. Triage read it once per alert, a read transaction each.
const OVERRIDES_TTL: Duration = Duration::from_secs(1);

fn ms_to_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn ensure_tenant(c: &rusqlite::Connection, tenant: &str) -> Result<(), StoreError> {
    check_tenant_id(tenant)?;
    c.execute(
        "INSERT OR IGNORE INTO tenants(tenant_id, created_at) VALUES (?1, ?2)",
        params![tenant, now_ms()],
    )?;
    Ok(())
}

/// Updates one key of one tenant, failing with NotFound when there is none.
fn update_key(
    c: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
    tenant: &str,
    key_id: &str,
) -> Result<(), StoreError> {
    let n = c.execute(sql, params)?;
    if n == 0 {
        return Err(StoreError::NotFound(format!(
            "no active key {key_id} for tenant {tenant}"
        )));
    }
    Ok(())
}

impl SqliteDirectory {
    pub fn new(db: Db) -> Self {
        SqliteDirectory {
            db,
            overrides: Arc::new(OverridesCache::new(OVERRIDES_TTL)),
        }
    }

    /// Whether no tenant exists yet (first start of `causeflow serve`).
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        self.db
            .read(|c| {
                let n: i64 = c.query_row("SELECT count(*) FROM tenants", [], |r| r.get(0))?;
                Ok(n == 0)
            })
            .await
    }
}

#[async_trait]
impl KeyAdmin for SqliteDirectory {
    async fn store_key(&self, tenant: &str, name: &str, key: &IssuedKey) -> Result<(), StoreError> {
        let (tenant, name, k) = (tenant.to_owned(), name.to_owned(), key.clone());
        self.db
            .write(move |c| {
                ensure_tenant(c, &tenant)?;
                c.execute(
                    "INSERT INTO api_keys(key_id, tenant_id, name, key_hash, webhook_secret, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![k.key_id, tenant, name, k.key_hash, k.webhook_secret, now_ms()],
                )?;
                Ok(())
            })
            .await
    }

    async fn list_keys(&self, tenant: &str) -> Result<Vec<KeySummary>, StoreError> {
        let tenant = tenant.to_owned();
        self.db
            .read(move |c| {
                let mut st = c.prepare(
                    "SELECT key_id, tenant_id, name, created_at, revoked_at IS NOT NULL,
                            previous_secret IS NOT NULL, sentry_client_secret IS NOT NULL
                     FROM api_keys WHERE tenant_id = ?1 ORDER BY created_at, key_id",
                )?;
                let rows = st.query_map([tenant], |r| {
                    Ok(KeySummary {
                        key_id: r.get(0)?,
                        tenant_id: r.get(1)?,
                        name: r.get(2)?,
                        created_at: ms_to_rfc3339(r.get(3)?),
                        revoked: r.get(4)?,
                        rotating: r.get(5)?,
                        has_sentry_secret: r.get(6)?,
                        last_used_at: None,
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    async fn revoke_key(&self, tenant: &str, key_id: &str) -> Result<(), StoreError> {
        let (t, k) = (tenant.to_owned(), key_id.to_owned());
        self.db
            .write(move |c| {
                update_key(
                    c,
                    "UPDATE api_keys SET revoked_at = ?3
                     WHERE tenant_id = ?1 AND key_id = ?2 AND revoked_at IS NULL",
                    params![t, k, now_ms()],
                    &t,
                    &k,
                )
            })
            .await
    }

    async fn rotate_secret(&self, tenant: &str, key_id: &str) -> Result<String, StoreError> {
        let secret = new_webhook_secret();
        let (t, k, s) = (tenant.to_owned(), key_id.to_owned(), secret.clone());
        self.db
            .write(move |c| {
                update_key(
                    c,
                    "UPDATE api_keys SET previous_secret = webhook_secret, webhook_secret = ?3
                     WHERE tenant_id = ?1 AND key_id = ?2 AND revoked_at IS NULL",
                    params![t, k, s],
                    &t,
                    &k,
                )
            })
            .await?;
        Ok(secret)
    }

    async fn retire_secret(&self, tenant: &str, key_id: &str) -> Result<(), StoreError> {
        let (t, k) = (tenant.to_owned(), key_id.to_owned());
        self.db
            .write(move |c| {
                update_key(
                    c,
                    "UPDATE api_keys SET previous_secret = NULL
                     WHERE tenant_id = ?1 AND key_id = ?2 AND revoked_at IS NULL",
                    params![t, k],
                    &t,
                    &k,
                )
            })
            .await
    }

    async fn set_sentry_secret(
        &self,
        tenant: &str,
        key_id: &str,
        secret: &str,
    ) -> Result<(), StoreError> {
        let secret = clean_sentry_secret(secret)?;
        let (t, k, s) = (tenant.to_owned(), key_id.to_owned(), secret);
        self.db
            .write(move |c| {
                update_key(
                    c,
                    "UPDATE api_keys SET sentry_client_secret = ?3
                     WHERE tenant_id = ?1 AND key_id = ?2 AND revoked_at IS NULL",
                    params![t, k, s],
                    &t,
                    &k,
                )
            })
            .await
    }

    async fn set_agent_overrides(
        &self,
        tenant: &str,
        overrides: &AgentOverrides,
    ) -> Result<(), StoreError> {
        let t = tenant.to_owned();
        let json = (!overrides.0.is_empty())
            .then(|| serde_json::to_string(overrides).expect("overrides serialise"));
        self.db
            .write(move |c| {
                ensure_tenant(c, &t)?;
                c.execute(
                    "UPDATE tenants SET agent_overrides = ?2 WHERE tenant_id = ?1",
                    params![t, json],
                )?;
                Ok(())
            })
            .await?;
        self.overrides.forget(tenant);
        Ok(())
    }

    async fn allowed_topics(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        let t = tenant.to_owned();
        self.db
            .read(move |c| {
                let mut st = c.prepare_cached(
                    "SELECT topic_arn FROM topic_allowlist WHERE tenant_id = ?1 ORDER BY topic_arn",
                )?;
                let rows = st.query_map([t], |r| r.get(0))?;
                Ok(rows.collect::<Result<Vec<String>, _>>()?)
            })
            .await
    }

    async fn allow_topic(
        &self,
        tenant: &str,
        topic_arn: &str,
        allow: bool,
    ) -> Result<(), StoreError> {
        check_topic_arn(topic_arn)?;
        let (t, a) = (tenant.to_owned(), topic_arn.to_owned());
        self.db
            .write(move |c| {
                ensure_tenant(c, &t)?;
                if allow {
                    c.execute(
                        "INSERT OR IGNORE INTO topic_allowlist(tenant_id, topic_arn, created_at) VALUES (?1, ?2, ?3)",
                        params![t, a, now_ms()],
                    )?;
                } else {
                    c.execute(
                        "DELETE FROM topic_allowlist WHERE tenant_id = ?1 AND topic_arn = ?2",
                        params![t, a],
                    )?;
                }
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl ApiKeys for SqliteDirectory {
    async fn key_by_hash(&self, key_hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.db.read_now(|c| {
            let mut st = c.prepare_cached(
                "SELECT key_id, tenant_id, name, webhook_secret, previous_secret,
                            sentry_client_secret, revoked_at IS NOT NULL
                     FROM api_keys WHERE key_hash = ?1",
            )?;
            Ok(st
                .query_row([key_hash], |r| {
                    let mut secrets = vec![r.get::<_, String>(3)?];
                    if let Some(prev) = r.get::<_, Option<String>>(4)? {
                        secrets.push(prev);
                    }
                    Ok(KeyRecord {
                        key_id: r.get(0)?,
                        tenant_id: r.get(1)?,
                        name: r.get(2)?,
                        webhook_secrets: secrets,
                        sentry_client_secret: r.get(5)?,
                        revoked: r.get(6)?,
                    })
                })
                .optional()?)
        })
    }
}

#[async_trait]
impl TenantSettings for SqliteDirectory {
    async fn agent_overrides(&self, tenant_id: &str) -> Result<AgentOverrides, StoreError> {
        if let Some(o) = self.overrides.get(tenant_id) {
            return Ok(o);
        }
        let read = self.read_overrides(tenant_id)?;
        self.overrides.put(tenant_id, &read);
        Ok(read)
    }
}

impl SqliteDirectory {
    fn read_overrides(&self, tenant_id: &str) -> Result<AgentOverrides, StoreError> {
        let json: Option<String> = self.db.read_now(|c| {
            Ok(
                c.prepare_cached("SELECT agent_overrides FROM tenants WHERE tenant_id = ?1")?
                    .query_row([tenant_id], |r| r.get(0))
                    .optional()?
                    .flatten(),
            )
        })?;
        match json {
            None => Ok(AgentOverrides::default()),
            Some(j) => serde_json::from_str(&j)
                .map_err(|e| StoreError::Unavailable(format!("tenant agent overrides: {e}"))),
        }
    }
}

#[async_trait]
impl TopicAllowList for SqliteDirectory {
    async fn topic_allowed(&self, tenant_id: &str, topic_arn: &str) -> Result<bool, StoreError> {
        let (t, a) = (tenant_id.to_owned(), topic_arn.to_owned());
        self.db
            .read(move |c| {
                Ok(c.prepare_cached(
                    "SELECT 1 FROM topic_allowlist WHERE tenant_id = ?1 AND topic_arn = ?2",
                )?
                .exists(params![t, a])?)
            })
            .await
    }
}

/// The record of SNS subscriptions per tenant in the SQLite file, beside
/// [`crate::aws::DynamoSubscriptions`] on AWS.
#[derive(Clone)]
pub struct SqliteSubscriptions {
    db: Db,
}

impl SqliteSubscriptions {
    pub fn new(db: Db) -> Self {
        SqliteSubscriptions { db }
    }
}

#[async_trait]
impl Subscriptions for SqliteSubscriptions {
    async fn record(&self, sub: &Subscription) -> Result<(), StoreError> {
        let sub = sub.clone();
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT INTO sns_subscriptions(tenant_id, topic_arn, state, subscription_arn, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(tenant_id, topic_arn) DO UPDATE SET state = excluded.state,
                        subscription_arn = COALESCE(excluded.subscription_arn, subscription_arn),
                        updated_at = excluded.updated_at",
                    params![sub.tenant_id, sub.topic_arn, sub.state.as_str(), sub.subscription_arn, now_ms()],
                )?;
                Ok(())
            })
            .await
    }

    async fn list(&self, tenant_id: &str) -> Result<Vec<Subscription>, StoreError> {
        let t = tenant_id.to_owned();
        self.db
            .read(move |c| {
                let mut st = c.prepare(
                    "SELECT tenant_id, topic_arn, state, subscription_arn, updated_at
                     FROM sns_subscriptions WHERE tenant_id = ?1 ORDER BY topic_arn",
                )?;
                let rows = st.query_map([t], |r| {
                    Ok(Subscription {
                        tenant_id: r.get(0)?,
                        topic_arn: r.get(1)?,
                        state: SubscriptionState::parse(&r.get::<_, String>(2)?)
                            .unwrap_or(SubscriptionState::Pending),
                        subscription_arn: r.get(3)?,
                        updated_at: ms_to_rfc3339(r.get(4)?),
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }
}

#[async_trait]
impl crate::ports::KeyUsage for SqliteDirectory {
    async fn record_use(&self, key_id: &str, at_ms: i64) -> Result<(), StoreError> {
        let k = key_id.to_owned();
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO key_usage(key_id, last_used_at) VALUES (?1, ?2)
                     ON CONFLICT(key_id) DO UPDATE SET last_used_at = max(last_used_at, excluded.last_used_at)",
                )?
                .execute(params![k, at_ms])?;
                Ok(())
            })
            .await
    }

    async fn last_used(
        &self,
        key_ids: &[String],
    ) -> Result<std::collections::HashMap<String, i64>, StoreError> {
        let ids = key_ids.to_vec();
        self.db
            .read(move |c| {
                let mut st =
                    c.prepare_cached("SELECT last_used_at FROM key_usage WHERE key_id = ?1")?;
                let mut out = std::collections::HashMap::new();
                for id in ids {
                    if let Some(at) = st.query_row([&id], |r| r.get::<_, i64>(0)).optional()? {
                        out.insert(id, at);
                    }
                }
                Ok(out)
            })
            .await
    }
}
