//! Duplicate counts on AWS: each firing answered 409 adds one to a counter item of its incident
//! in the dedup table (`#dups#<tenant>#<incidentId>`, a key no dedup record can have), which
//! the ingest function already writes. Readers of incidents (the incidents API, the console, the
//! CLI) merge the counter into what they read; triage never reads or writes it, so its
//! conditional incident writes cannot lose a count.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{TransactWriteItem, Update};
use aws_sdk_dynamodb::Client as Ddb;
use tracing::warn;

use super::item::{batch_get_by_pk, get_n, get_s, n, s, unavailable};
use crate::error::StoreError;

/// Counters outlive their incident's key; they go a little over a year after the last duplicate.
const KEEP_SECS: i64 = 400 * 24 * 3600;
/// Items per transaction (DynamoDB's limit).
const PER_CALL: usize = 100;

/// The counter items.
#[derive(Clone)]
pub struct DuplicateCounts {
    ddb: Ddb,
    table: String,
}

fn pk(tenant: &str, incident_id: &str) -> String {
    format!("#dups#{tenant}#{incident_id}")
}

impl DuplicateCounts {
    pub fn new(ddb: Ddb, dedup_table: &str) -> Self {
        DuplicateCounts {
            ddb,
            table: dedup_table.to_owned(),
        }
    }

    fn update(&self, tenant: &str, incident_id: &str, by: i64, now_ms: i64) -> Update {
        Update::builder()
            .table_name(&self.table)
            .key("pk", s(pk(tenant, incident_id)))
            .update_expression("ADD #c :by SET lastSeen = :now, #ttl = :ttl")
            .expression_attribute_names("#c", "count")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":by", n(by))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":ttl", n(now_ms / 1000 + KEEP_SECS))
            .build()
            .expect("table, key and expression are set")
    }

    /// Counts one duplicate per entry of `incident_ids` (an id may repeat). Best effort: the 409
    /// stands whatever happens here, so a failure is logged, not returned.
    pub async fn count(&self, tenant: &str, incident_ids: &[String], now_ms: i64) {
        let mut by: HashMap<&str, i64> = HashMap::new();
        for id in incident_ids {
            *by.entry(id.as_str()).or_default() += 1;
        }
        let updates: Vec<Update> = by
            .into_iter()
            .map(|(id, k)| self.update(tenant, id, k, now_ms))
            .collect();
        for chunk in updates.chunks(PER_CALL) {
            let r = if let [one] = chunk {
                let mut req = self
                    .ddb
                    .update_item()
                    .table_name(one.table_name())
                    .set_key(Some(one.key().clone()))
                    .update_expression(one.update_expression());
                req = req.set_expression_attribute_names(one.expression_attribute_names().cloned());
                req =
                    req.set_expression_attribute_values(one.expression_attribute_values().cloned());
                req.send()
                    .await
                    .map(|_| ())
                    .map_err(|e| unavailable("count duplicate", e))
            } else {
                let items = chunk
                    .iter()
                    .map(|u| TransactWriteItem::builder().update(u.clone()).build())
                    .collect();
                self.ddb
                    .transact_write_items()
                    .set_transact_items(Some(items))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| unavailable("count duplicates", e))
            };
            if let Err(e) = r {
                warn!(error = %e, tenant, "duplicate counts not recorded");
            }
        }
    }

    /// Each incident's count and last duplicate (Unix ms), for those that have one.
    pub async fn read(
        &self,
        tenant: &str,
        incident_ids: &[&str],
    ) -> Result<HashMap<String, (u64, i64)>, StoreError> {
        let prefix = format!("#dups#{tenant}#");
        let pks: Vec<String> = incident_ids.iter().map(|id| pk(tenant, id)).collect();
        let items = batch_get_by_pk(
            &self.ddb,
            &self.table,
            &pks,
            "pk, #c, lastSeen",
            &[("#c", "count")],
            "read duplicate counts",
        )
        .await?;
        Ok(items
            .iter()
            .filter_map(|item| {
                let id = get_s(item, "pk")?.strip_prefix(&prefix)?.to_owned();
                let c = get_n(item, "count")?;
                Some((id, (c.max(0) as u64, get_n(item, "lastSeen").unwrap_or(0))))
            })
            .collect())
    }
}
