//! Keys' last use in DynamoDB ([`KeyUsage`]). The items live in the dedup table, which the ingest
//! function already writes, under keys (`#keyuse#<keyId>`) that no dedup record can have (those
//! start with a tenant id, never empty): so recording a key's use never needs write access to the
//! keys table.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::KeysAndAttributes;
use aws_sdk_dynamodb::Client as Ddb;

use super::item::{get_n, get_s, n, s, unavailable};
use crate::error::StoreError;
use crate::ports::KeyUsage;

/// How long a use is kept once the key is no longer used.
const KEEP_SECS: i64 = 400 * 24 * 3600;
/// BatchGetItem's limit.
const BATCH: usize = 100;

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
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(unavailable("record key use", e)),
        }
    }

    async fn last_used(&self, key_ids: &[String]) -> Result<HashMap<String, i64>, StoreError> {
        let mut out = HashMap::new();
        for chunk in key_ids.chunks(BATCH) {
            let keys = chunk
                .iter()
                .map(|k| HashMap::from([("pk".to_owned(), s(pk(k)))]))
                .collect::<Vec<_>>();
            let mut request = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .projection_expression("pk, lastUsedAt")
                    .build()
                    .map_err(|e| StoreError::Invalid(e.to_string()))?,
            );
            // Unprocessed keys (throttling) are asked for again with backoff, a bounded number
            // of times; keys still unread then are an error, not "never used".
            for attempt in 0..5u32 {
                let Some(req) = request.take() else { break };
                if attempt > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(25 << attempt)).await;
                }
                let got = self
                    .ddb
                    .batch_get_item()
                    .request_items(&self.table, req)
                    .send()
                    .await
                    .map_err(|e| unavailable("read key use", e))?;
                for item in got
                    .responses
                    .and_then(|mut r| r.remove(&self.table))
                    .unwrap_or_default()
                {
                    if let (Some(p), Some(at)) = (get_s(&item, "pk"), get_n(&item, "lastUsedAt")) {
                        if let Some(id) = p.strip_prefix("#keyuse#") {
                            out.insert(id.to_owned(), at);
                        }
                    }
                }
                request = got
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .filter(|k| !k.keys.is_empty());
            }
            if request.is_some() {
                return Err(StoreError::Unavailable(
                    "read key use: keys left unprocessed after 5 attempts".into(),
                ));
            }
        }
        Ok(out)
    }
}
