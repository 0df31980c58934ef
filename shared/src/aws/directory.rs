//! Tenants and API keys in DynamoDB. Keys are items keyed by the SHA-256 of the API key, with a
//! `byTenant` index for management; tenant settings live in their own table.

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;

use super::item::{get_n, get_s, n, s, unavailable, Item};
use crate::auth::{new_webhook_secret, IssuedKey};
use crate::error::StoreError;
use crate::now_ms;
use crate::policy::{AgentOverrides, OverridesCache};
use crate::ports::{ApiKeys, KeyAdmin, KeyRecord, KeySummary, TenantSettings, TopicAllowList};
use crate::validate::{check_tenant_id, check_topic_arn, clean_sentry_secret};

/// The key and tenant ports ([`ApiKeys`], [`TenantSettings`], [`TopicAllowList`]) and
/// [`KeyAdmin`] on the keys and tenants tables.
#[derive(Clone)]
pub struct DynamoDirectory {
    ddb: Client,
    keys_table: String,
    tenants_table: String,
}

fn ms_to_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl DynamoDirectory {
    fn tenants(&self) -> DynamoTenants {
        DynamoTenants::new(self.ddb.clone(), &self.tenants_table)
    }

    pub fn new(ddb: Client, keys_table: &str, tenants_table: &str) -> Self {
        DynamoDirectory {
            ddb,
            keys_table: keys_table.to_owned(),
            tenants_table: tenants_table.to_owned(),
        }
    }

    /// The key item of `key_id` in `tenant`, found through the `byTenant` index.
    async fn key_item(&self, tenant: &str, key_id: &str) -> Result<Item, StoreError> {
        let out = self
            .ddb
            .query()
            .table_name(&self.keys_table)
            .index_name("byTenant")
            .key_condition_expression("tenantId = :t AND keyId = :k")
            .expression_attribute_values(":t", s(tenant))
            .expression_attribute_values(":k", s(key_id))
            .send()
            .await
            .map_err(|e| unavailable("query keys", e))?;
        out.items
            .unwrap_or_default()
            .into_iter()
            .find(|i| !i.contains_key("revokedAt"))
            .ok_or_else(|| {
                StoreError::NotFound(format!("no active key {key_id} for tenant {tenant}"))
            })
    }

    /// Applies `update` (with `:v` bound to `value` when given) to an active key.
    async fn update_key(
        &self,
        tenant: &str,
        key_id: &str,
        update: &str,
        value: Option<String>,
    ) -> Result<(), StoreError> {
        let item = self.key_item(tenant, key_id).await?;
        let hash = get_s(&item, "keyHash").unwrap_or_default();
        let mut req = self
            .ddb
            .update_item()
            .table_name(&self.keys_table)
            .key("keyHash", s(hash))
            .update_expression(update)
            .condition_expression("attribute_exists(keyHash) AND attribute_not_exists(revokedAt)");
        if let Some(v) = value {
            req = req.expression_attribute_values(":v", s(v));
        }
        if update.contains(":now") {
            req = req.expression_attribute_values(":now", n(now_ms()));
        }
        req.send().await.map_err(|e| {
            if e.as_service_error()
                .is_some_and(|se| se.is_conditional_check_failed_exception())
            {
                StoreError::NotFound(format!("no active key {key_id} for tenant {tenant}"))
            } else {
                unavailable("update key", e)
            }
        })?;
        Ok(())
    }

    async fn ensure_tenant(&self, tenant: &str) -> Result<(), StoreError> {
        check_tenant_id(tenant)?;
        self.ddb
            .update_item()
            .table_name(&self.tenants_table)
            .key("tenantId", s(tenant))
            .update_expression("SET createdAt = if_not_exists(createdAt, :now)")
            .expression_attribute_values(":now", n(now_ms()))
            .send()
            .await
            .map_err(|e| unavailable("upsert tenant", e))?;
        Ok(())
    }
}

#[async_trait]
impl ApiKeys for DynamoDirectory {
    async fn key_by_hash(&self, key_hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.keys_table)
            .key("keyHash", s(key_hash))
            // A revoke must take effect on the very next request.
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("get key", e))?;
        Ok(out.item.map(|i| {
            let mut secrets = vec![get_s(&i, "webhookSecret").unwrap_or_default()];
            secrets.extend(get_s(&i, "previousSecret"));
            KeyRecord {
                key_id: get_s(&i, "keyId").unwrap_or_default(),
                tenant_id: get_s(&i, "tenantId").unwrap_or_default(),
                name: get_s(&i, "name").unwrap_or_default(),
                webhook_secrets: secrets,
                sentry_client_secret: get_s(&i, "sentryClientSecret"),
                revoked: i.contains_key("revokedAt"),
            }
        }))
    }
}

#[async_trait]
impl TenantSettings for DynamoDirectory {
    async fn agent_overrides(&self, tenant_id: &str) -> Result<AgentOverrides, StoreError> {
        self.tenants().agent_overrides(tenant_id).await
    }
}

/// The tenants table alone: all triage reads (its tenant settings).
#[derive(Clone)]
pub struct DynamoTenants {
    ddb: Client,
    table: String,
    overrides: std::sync::Arc<OverridesCache>,
}

/// How long a warm triage function reuses a tenant's agent table: a console edit reaches
/// triage within this time, and triage makes one GetItem per tenant per this time instead of
/// one per alert.
pub const OVERRIDES_TTL: std::time::Duration = std::time::Duration::from_secs(10);

impl DynamoTenants {
    pub fn new(ddb: Client, table: &str) -> Self {
        DynamoTenants {
            ddb,
            table: table.to_owned(),
            overrides: std::sync::Arc::new(OverridesCache::new(OVERRIDES_TTL)),
        }
    }
}

#[async_trait]
impl TenantSettings for DynamoTenants {
    async fn agent_overrides(&self, tenant_id: &str) -> Result<AgentOverrides, StoreError> {
        if let Some(o) = self.overrides.get(tenant_id) {
            return Ok(o);
        }
        let out = self
            .ddb
            .get_item()
            .table_name(&self.table)
            .key("tenantId", s(tenant_id))
            .send()
            .await
            .map_err(|e| unavailable("get tenant", e))?;
        let read = match out.item.as_ref().and_then(|i| get_s(i, "agentOverrides")) {
            None => AgentOverrides::default(),
            Some(j) => serde_json::from_str(&j)
                .map_err(|e| StoreError::Unavailable(format!("tenant agent overrides: {e}")))?,
        };
        self.overrides.put(tenant_id, &read);
        Ok(read)
    }
}

#[async_trait]
impl TopicAllowList for DynamoDirectory {
    async fn topic_allowed(&self, tenant_id: &str, topic_arn: &str) -> Result<bool, StoreError> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.tenants_table)
            .key("tenantId", s(tenant_id))
            .projection_expression("allowedTopics")
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("get tenant", e))?;
        Ok(out
            .item
            .as_ref()
            .and_then(|i| i.get("allowedTopics"))
            .and_then(|v| v.as_ss().ok())
            .is_some_and(|topics| topics.iter().any(|t| t == topic_arn)))
    }
}

#[async_trait]
impl KeyAdmin for DynamoDirectory {
    async fn store_key(&self, tenant: &str, name: &str, key: &IssuedKey) -> Result<(), StoreError> {
        self.ensure_tenant(tenant).await?;
        self.ddb
            .put_item()
            .table_name(&self.keys_table)
            .item("keyHash", s(&key.key_hash))
            .item("keyId", s(&key.key_id))
            .item("tenantId", s(tenant))
            .item("name", s(name))
            .item("webhookSecret", s(&key.webhook_secret))
            .item("createdAt", n(now_ms()))
            .condition_expression("attribute_not_exists(keyHash)")
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception())
                {
                    StoreError::Invalid("that API key is already stored".into())
                } else {
                    unavailable("put key", e)
                }
            })?;
        Ok(())
    }

    async fn list_keys(&self, tenant: &str) -> Result<Vec<KeySummary>, StoreError> {
        let items = self
            .ddb
            .query()
            .table_name(&self.keys_table)
            .index_name("byTenant")
            .key_condition_expression("tenantId = :t")
            .expression_attribute_values(":t", s(tenant))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| unavailable("list keys", e))?;
        let mut keys: Vec<KeySummary> = items
            .iter()
            .map(|i| KeySummary {
                key_id: get_s(i, "keyId").unwrap_or_default(),
                tenant_id: tenant.to_owned(),
                name: get_s(i, "name").unwrap_or_default(),
                created_at: ms_to_rfc3339(get_n(i, "createdAt").unwrap_or(0)),
                revoked: i.contains_key("revokedAt"),
                rotating: i.contains_key("previousSecret"),
                has_sentry_secret: i.contains_key("sentryClientSecret"),
                last_used_at: None,
            })
            .collect();
        keys.sort_by(|a, b| (&a.created_at, &a.key_id).cmp(&(&b.created_at, &b.key_id)));
        Ok(keys)
    }

    async fn revoke_key(&self, tenant: &str, key_id: &str) -> Result<(), StoreError> {
        self.update_key(tenant, key_id, "SET revokedAt = :now", None)
            .await
    }

    async fn rotate_secret(&self, tenant: &str, key_id: &str) -> Result<String, StoreError> {
        let secret = new_webhook_secret();
        self.update_key(
            tenant,
            key_id,
            "SET previousSecret = webhookSecret, webhookSecret = :v",
            Some(secret.clone()),
        )
        .await?;
        Ok(secret)
    }

    async fn retire_secret(&self, tenant: &str, key_id: &str) -> Result<(), StoreError> {
        self.update_key(tenant, key_id, "REMOVE previousSecret", None)
            .await
    }

    async fn set_sentry_secret(
        &self,
        tenant: &str,
        key_id: &str,
        secret: &str,
    ) -> Result<(), StoreError> {
        let secret = clean_sentry_secret(secret)?;
        self.update_key(tenant, key_id, "SET sentryClientSecret = :v", Some(secret))
            .await
    }

    async fn set_agent_overrides(
        &self,
        tenant: &str,
        overrides: &AgentOverrides,
    ) -> Result<(), StoreError> {
        self.ensure_tenant(tenant).await?;
        let req = self
            .ddb
            .update_item()
            .table_name(&self.tenants_table)
            .key("tenantId", s(tenant));
        let req = if overrides.0.is_empty() {
            req.update_expression("REMOVE agentOverrides")
        } else {
            req.update_expression("SET agentOverrides = :v")
                .expression_attribute_values(
                    ":v",
                    s(serde_json::to_string(overrides).expect("overrides serialise")),
                )
        };
        req.send()
            .await
            .map_err(|e| unavailable("set agent overrides", e))?;
        Ok(())
    }

    async fn allowed_topics(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.tenants_table)
            .key("tenantId", s(tenant))
            .projection_expression("allowedTopics")
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("get tenant", e))?;
        let mut topics: Vec<String> = out
            .item
            .as_ref()
            .and_then(|i| i.get("allowedTopics"))
            .and_then(|v| v.as_ss().ok())
            .cloned()
            .unwrap_or_default();
        topics.sort();
        Ok(topics)
    }

    async fn allow_topic(
        &self,
        tenant: &str,
        topic_arn: &str,
        allow: bool,
    ) -> Result<(), StoreError> {
        check_topic_arn(topic_arn)?;
        self.ensure_tenant(tenant).await?;
        self.ddb
            .update_item()
            .table_name(&self.tenants_table)
            .key("tenantId", s(tenant))
            .update_expression(if allow {
                "ADD allowedTopics :t"
            } else {
                "DELETE allowedTopics :t"
            })
            .expression_attribute_values(
                ":t",
                aws_sdk_dynamodb::types::AttributeValue::Ss(vec![topic_arn.to_owned()]),
            )
            .send()
            .await
            .map_err(|e| unavailable("update topic allow-list", e))?;
        Ok(())
    }
}
