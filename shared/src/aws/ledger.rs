//! The dedup lifecycle on DynamoDB + SQS (SPEC §5). A firing alert claims its key with one
//! conditional put (absent, expired, or a stale pending lease), is sent to SQS, then marked
//! queued; if the send fails the pending record is removed and the answer is 503. A resolve is
//! queued before its record is deleted, so a failure never loses it.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnValue;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure as OnFail;
use aws_sdk_dynamodb::Client as Ddb;
use aws_sdk_sqs::Client as Sqs;
use tracing::warn;

use super::item::{get_bool, get_n, get_s, n, s, unavailable, Item};
use crate::dedup::{decide, new_incident_id, Decision, DedupConfig, DedupRecord};
use crate::error::StoreError;
use crate::model::{Alert, AlertResult, AlertStatus, Provider, QueuedAlert};
use crate::ports::AlertLedger;

/// [`AlertLedger`] on the dedup table and the alert queue.
#[derive(Clone)]
pub struct DynamoLedger {
    ddb: Ddb,
    sqs: Sqs,
    table: String,
    queue_url: String,
    config: DedupConfig,
}

fn record(item: &Item) -> Option<DedupRecord> {
    Some(DedupRecord {
        incident_id: get_s(item, "incidentId")?,
        pending: get_bool(item, "pending"),
        lease_until_ms: get_n(item, "leaseUntil").unwrap_or(0),
        expires_at_ms: get_n(item, "expiresAt").unwrap_or(0),
    })
}

/// The table key of an alert. Tenant ids and provider names never contain `#`.
pub fn dedup_pk(tenant: &str, provider: Provider, source_alert_id: &str) -> String {
    format!("{tenant}#{provider}#{source_alert_id}")
}

impl DynamoLedger {
    pub fn new(ddb: Ddb, sqs: Sqs, table: &str, queue_url: &str, config: DedupConfig) -> Self {
        DynamoLedger {
            ddb,
            sqs,
            table: table.to_owned(),
            queue_url: queue_url.to_owned(),
            config,
        }
    }

    async fn send(&self, msg: &QueuedAlert) -> Result<(), StoreError> {
        self.sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(msg.to_queue_body())
            .send()
            .await
            .map_err(|e| unavailable("send to the alert queue", e))?;
        Ok(())
    }

    async fn get(&self, pk: &str) -> Result<Option<Item>, StoreError> {
        Ok(self
            .ddb
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("get dedup record", e))?
            .item)
    }

    /// Opens an incident for a firing alert, or reports the open one.
    async fn fire(
        &self,
        pk: &str,
        msg: &mut QueuedAlert,
        now: i64,
    ) -> Result<Decision, StoreError> {
        let ttl_ms = self.config.ttl.as_millis() as i64;
        let lease_ms = self.config.lease.as_millis() as i64;
        let claimed = self
            .ddb
            .put_item()
            .table_name(&self.table)
            .item("pk", s(pk))
            .item("incidentId", s(&msg.incident_id))
            .item("pending", aws_sdk_dynamodb::types::AttributeValue::Bool(true))
            .item("leaseUntil", n(now + lease_ms))
            .item("expiresAt", n(now + ttl_ms))
            // DynamoDB's TTL deletes expired records eventually; `expiresAt` decides at once.
            .item("ttl", n((now + ttl_ms) / 1000 + 1))
            .condition_expression(
                "attribute_not_exists(pk) OR expiresAt <= :now OR (pending = :yes AND leaseUntil <= :now)",
            )
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":yes", aws_sdk_dynamodb::types::AttributeValue::Bool(true))
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(OnFail::AllOld)
            .send()
            .await;
        let old = match claimed {
            Ok(out) => out.attributes,
            Err(e) => {
                let ccf = e
                    .as_service_error()
                    .filter(|se| se.is_conditional_check_failed_exception());
                let Some(se) = ccf else {
                    return Err(unavailable("claim dedup record", e));
                };
                let item = match se {
                    aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => {
                        c.item.clone()
                    }
                    _ => None,
                };
                let item = match item {
                    Some(i) => Some(i),
                    None => self.get(pk).await?,
                };
                let existing = item.as_ref().and_then(record);
                return Ok(
                    match decide(existing.as_ref(), AlertStatus::Firing, now, new_incident_id) {
                        // Changed between the put and the read: let the sender retry.
                        Decision::Create { .. } => {
                            return Err(StoreError::Unavailable(
                                "dedup record changed concurrently".into(),
                            ))
                        }
                        d => d,
                    },
                );
            }
        };
        // Taking over a stale pending record: finish its job under its incident id, which the
        // sender may already have been told and triage may already have recorded.
        if let Some(prev) = old.as_ref().and_then(record) {
            if prev.pending && prev.expires_at_ms > now && prev.incident_id != msg.incident_id {
                self.ddb
                    .update_item()
                    .table_name(&self.table)
                    .key("pk", s(pk))
                    .update_expression("SET incidentId = :old")
                    .condition_expression("incidentId = :new")
                    .expression_attribute_values(":old", s(&prev.incident_id))
                    .expression_attribute_values(":new", s(&msg.incident_id))
                    .send()
                    .await
                    .map_err(|e| unavailable("take over dedup record", e))?;
                msg.incident_id = prev.incident_id;
            }
        }
        if let Err(e) = self.send(msg).await {
            // Leave nothing behind, so the sender's retry succeeds.
            let cleanup = self
                .ddb
                .delete_item()
                .table_name(&self.table)
                .key("pk", s(pk))
                .condition_expression("incidentId = :id AND pending = :yes")
                .expression_attribute_values(":id", s(&msg.incident_id))
                .expression_attribute_values(
                    ":yes",
                    aws_sdk_dynamodb::types::AttributeValue::Bool(true),
                )
                .send()
                .await;
            if let Err(ce) = cleanup {
                warn!(error = %aws_sdk_dynamodb::error::DisplayErrorContext(ce),
                      "removing the pending record failed; its lease expires on its own");
            }
            return Err(e);
        }
        let marked = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression("SET pending = :no")
            .condition_expression("incidentId = :id")
            .expression_attribute_values(":id", s(&msg.incident_id))
            .expression_attribute_values(
                ":no",
                aws_sdk_dynamodb::types::AttributeValue::Bool(false),
            )
            .send()
            .await;
        if let Err(e) = marked {
            // The alert is queued, so it is acknowledged. If the record stays pending, a retry
            // after the lease re-queues it under the same incident id, which triage absorbs.
            warn!(error = %aws_sdk_dynamodb::error::DisplayErrorContext(e), "marking the dedup record queued failed");
        }
        Ok(Decision::Create {
            incident_id: msg.incident_id.clone(),
        })
    }

    /// Resolves the open incident of a resolved alert, if any.
    async fn resolve(
        &self,
        pk: &str,
        msg: &mut QueuedAlert,
        now: i64,
    ) -> Result<Decision, StoreError> {
        let existing = self.get(pk).await?.as_ref().and_then(record);
        let decision = decide(
            existing.as_ref(),
            AlertStatus::Resolved,
            now,
            new_incident_id,
        );
        if let Decision::Resolve { incident_id } = &decision {
            msg.incident_id = incident_id.clone();
            self.send(msg).await?;
            let deleted = self
                .ddb
                .delete_item()
                .table_name(&self.table)
                .key("pk", s(pk))
                .condition_expression("incidentId = :id")
                .expression_attribute_values(":id", s(incident_id))
                .send()
                .await;
            if let Err(e) = deleted {
                if !e
                    .as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception())
                {
                    // The resolve is queued; the retry queues it again, which triage absorbs.
                    return Err(unavailable("release dedup record", e));
                }
            }
        }
        Ok(decision)
    }
}

#[async_trait]
impl AlertLedger for DynamoLedger {
    async fn admit(
        &self,
        tenant_id: &str,
        provider: Provider,
        alerts: &[Alert],
        received_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<AlertResult>, StoreError> {
        let now = received_at.timestamp_millis();
        let received = received_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut results = Vec::with_capacity(alerts.len());
        for alert in alerts {
            let pk = dedup_pk(tenant_id, provider, &alert.source_alert_id);
            let mut msg = QueuedAlert {
                tenant_id: tenant_id.to_owned(),
                provider,
                incident_id: new_incident_id(),
                alert: alert.clone(),
                received_at: received.clone(),
            };
            let decision = match alert.status {
                AlertStatus::Firing => self.fire(&pk, &mut msg, now).await?,
                AlertStatus::Resolved => self.resolve(&pk, &mut msg, now).await?,
                AlertStatus::Acknowledged => Decision::Acknowledge,
                AlertStatus::Ignored => Decision::Ignore,
            };
            let (outcome, incident_id) = decision.outcome();
            results.push(AlertResult {
                source_alert_id: alert.source_alert_id.clone(),
                incident_id: incident_id.map(str::to_owned),
                outcome,
            });
        }
        Ok(results)
    }
}
