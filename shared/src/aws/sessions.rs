//! Console sign-in links and sessions in one DynamoDB table ([`ConsoleSessions`]).
//!
//! Items are keyed `id` = `link#<digest>` or `session#<digest>` (the SHA-256 of the secret the
//! browser holds; the secret itself is never stored). Each carries `tenantId`, `expiresAt`
//! (Unix ms, what the code checks) and `ttl` (Unix seconds, so DynamoDB's TTL drops it some time
//! after expiry). The `byTenant` index (keys only) lets `causeflow sessions revoke` find every
//! link and session of a tenant.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnValue;
use aws_sdk_dynamodb::Client as Ddb;

use super::item::{get_n, get_s, is_ccf, n, s, unavailable};
use crate::error::StoreError;
use crate::ports::{ConsoleSession, ConsoleSessions};

/// Most items one `revoke_tenant` call deletes. A tenant has a handful of sessions; the bound
/// only keeps a runaway (say, a script minting links in a loop) from turning one call into an
/// unbounded walk. Past it the call fails saying so, and running it again goes on.
const MAX_REVOKED: usize = 10_000;

/// [`ConsoleSessions`] on the sessions table (`id` key, `byTenant` keys-only index).
#[derive(Clone)]
pub struct DynamoSessions {
    ddb: Ddb,
    table: String,
}

fn link_id(token_hash: &str) -> String {
    format!("link#{token_hash}")
}

fn session_id(session_hash: &str) -> String {
    format!("session#{session_hash}")
}

/// DynamoDB's TTL is in seconds: round up, so an item is never dropped before it expires.
fn ttl_secs(expires_at_ms: i64) -> i64 {
    expires_at_ms.div_euclid(1000) + 1
}

impl DynamoSessions {
    /// The store on `table` (the stack's `ConsoleSessionsTable`).
    pub fn new(ddb: Ddb, table: &str) -> Self {
        DynamoSessions {
            ddb,
            table: table.to_owned(),
        }
    }
}

#[async_trait]
impl ConsoleSessions for DynamoSessions {
    async fn create_link(
        &self,
        tenant: &str,
        token_hash: &str,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let out = self
            .ddb
            .put_item()
            .table_name(&self.table)
            .item("id", s(link_id(token_hash)))
            .item("tenantId", s(tenant))
            .item("createdAt", n(crate::now_ms()))
            .item("expiresAt", n(expires_at_ms))
            .item("ttl", n(ttl_secs(expires_at_ms)))
            // Never overwrite: a rewritten link would be usable again.
            .condition_expression("attribute_not_exists(id)")
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e) if is_ccf(&e) => Err(StoreError::Invalid(
                "that sign-in link is already stored".into(),
            )),
            Err(e) => Err(unavailable("put sign-in link", e)),
        }
    }

    async fn redeem_link(
        &self,
        token_hash: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        // One conditional write reads and uses up the link: of two concurrent redemptions,
        // DynamoDB lets exactly one pass the condition.
        let out = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .key("id", s(link_id(token_hash)))
            .update_expression("SET usedAt = :now")
            .condition_expression(
                "attribute_exists(id) AND attribute_not_exists(usedAt) AND expiresAt > :now",
            )
            .expression_attribute_values(":now", n(now_ms))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match out {
            Ok(out) => Ok(out.attributes.as_ref().and_then(|a| get_s(a, "tenantId"))),
            Err(e) if is_ccf(&e) => Ok(None),
            Err(e) => Err(unavailable("redeem sign-in link", e)),
        }
    }

    async fn create_session(
        &self,
        session_hash: &str,
        session: &ConsoleSession,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let out = self
            .ddb
            .put_item()
            .table_name(&self.table)
            .item("id", s(session_id(session_hash)))
            .item("tenantId", s(&session.tenant_id))
            .item("csrf", s(&session.csrf_token))
            .item("createdAt", n(session.created_at_ms))
            .item("lastSeen", n(session.last_seen_ms))
            .item("expiresAt", n(expires_at_ms))
            .item("ttl", n(ttl_secs(expires_at_ms)))
            .condition_expression("attribute_not_exists(id)")
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e) if is_ccf(&e) => {
                Err(StoreError::Invalid("that session is already stored".into()))
            }
            Err(e) => Err(unavailable("put console session", e)),
        }
    }

    async fn session(&self, session_hash: &str) -> Result<Option<ConsoleSession>, StoreError> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.table)
            .key("id", s(session_id(session_hash)))
            // A sign-out or revoke must take effect on the very next request.
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("get console session", e))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let parts = (
            get_s(&item, "tenantId"),
            get_s(&item, "csrf"),
            get_n(&item, "createdAt"),
            get_n(&item, "lastSeen"),
        );
        match parts {
            (Some(tenant_id), Some(csrf_token), Some(created_at_ms), Some(last_seen_ms)) => {
                Ok(Some(ConsoleSession {
                    tenant_id,
                    csrf_token,
                    created_at_ms,
                    last_seen_ms,
                }))
            }
            // An item this code did not write grants nothing: signed out, not a 503 per request.
            _ => {
                tracing::warn!("a console session item lacks attributes; treated as signed out");
                Ok(None)
            }
        }
    }

    async fn touch(&self, session_hash: &str, now_ms: i64) -> Result<(), StoreError> {
        // Only forward, and only while the session exists: a touch racing a sign-out must not
        // bring back a half item.
        let out = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .key("id", s(session_id(session_hash)))
            .update_expression("SET lastSeen = :now")
            .condition_expression("attribute_exists(id) AND lastSeen < :now")
            .expression_attribute_values(":now", n(now_ms))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e) if is_ccf(&e) => Ok(()),
            Err(e) => Err(unavailable("touch console session", e)),
        }
    }

    async fn end_session(&self, session_hash: &str) -> Result<(), StoreError> {
        self.ddb
            .delete_item()
            .table_name(&self.table)
            .key("id", s(session_id(session_hash)))
            .send()
            .await
            .map_err(|e| unavailable("delete console session", e))?;
        Ok(())
    }

    async fn revoke_tenant(&self, tenant: &str) -> Result<usize, StoreError> {
        // The index is read eventually consistently, so a session created in the last moment may
        // be missed; the sessions it does list are deleted with strongly consistent writes.
        let items = self
            .ddb
            .query()
            .table_name(&self.table)
            .index_name("byTenant")
            .key_condition_expression("tenantId = :t")
            .expression_attribute_values(":t", s(tenant))
            .into_paginator()
            .items()
            .send();
        let mut items = std::pin::pin!(items);
        let (mut seen, mut sessions) = (0, 0);
        while let Some(item) = items.next().await {
            let item = item.map_err(|e| unavailable("list console sessions", e))?;
            if seen == MAX_REVOKED {
                return Err(StoreError::Unavailable(format!(
                    "{sessions} sessions signed out, but tenant {tenant} has more than \
                     {MAX_REVOKED} links and sessions: run it again"
                )));
            }
            seen += 1;
            let Some(id) = get_s(&item, "id") else {
                continue;
            };
            let old = self
                .ddb
                .delete_item()
                .table_name(&self.table)
                .key("id", s(&id))
                .return_values(ReturnValue::AllOld)
                .send()
                .await
                .map_err(|e| unavailable("delete console session", e))?;
            // Counted only when this call deleted it: the index may still list an item a
            // sign-out already removed.
            if id.starts_with("session#") && old.attributes.is_some() {
                sessions += 1;
            }
        }
        Ok(sessions)
    }
}
