//! Keys' last use in DynamoDB ([`KeyUsage`]). The items live in the dedup table, which the ingest
//! function already writes, under keys (`#keyuse#<keyId>`) that no dedup record can have (those
//! start with a tenant id, never empty): so recording a key's use never needs write access to the
//! keys table.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client as Ddb;

use super::item::{batch_get_by_pk, get_n, get_s, is_ccf, n, s, unavailable};
use crate::error::StoreError;
use crate::ports::KeyUsage;

/// How long a use is kept once the key is no longer used.
const KEEP_SECS: i64 = 400 * 24 * 3600;

/// [`KeyUsage`] on the dedup table.
#[derive(Clone)]
pub struct DynamoKeyUsage {
    ddb: Ddb,
    table: String,
}

impl DynamoKeyUsage {
    pub fn new(ddb: Ddb, dedup_table: &str) -> Self {
        DynamoKeyUsage {
            ddb,
            table: dedup_table.to_owned(),
        }
    }
}

fn pk(key_id: &str) -> String {
    format!("#keyuse#{key_id}")
}

#[async_trait]
impl KeyUsage for DynamoKeyUsage {
    async fn record_use(&self, key_id: &str, at_ms: i64) -> Result<(), StoreError> {
        let r = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk(key_id)))
            .update_expression("SET lastUsedAt = :t, #ttl = :ttl")
            // A slower writer with an older time never moves it back.
            .condition_expression("attribute_not_exists(lastUsedAt) OR lastUsedAt < :t")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":t", n(at_ms))
            .expression_attribute_values(":ttl", n(at_ms / 1000 + KEEP_SECS))
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_ccf(&e) => Ok(()),
            Err(e) => Err(unavailable("record key use", e)),
        }
    }

    async fn last_used(&self, key_ids: &[String]) -> Result<HashMap<String, i64>, StoreError> {
        let pks: Vec<String> = key_ids.iter().map(|k| pk(k)).collect();
        let items = batch_get_by_pk(
            &self.ddb,
            &self.table,
            &pks,
            "pk, lastUsedAt",
            &[],
            "read key use",
        )
        .await?;
        Ok(items
            .iter()
            .filter_map(|item| {
                let id = get_s(item, "pk")?.strip_prefix("#keyuse#")?.to_owned();
                Some((id, get_n(item, "lastUsedAt")?))
            })
            .collect())
    }
}
