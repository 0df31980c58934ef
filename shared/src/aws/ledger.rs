//! The dedup lifecycle on DynamoDB + SQS (SPEC §5). A firing alert claims its key with one
//! conditional put (absent, expired, or a stale pending lease), is sent to SQS, then marked
//! queued; if the send fails the pending record is removed and the answer is 503. A resolve is
//! queued before its record is deleted, so a failure never loses it.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure as OnFail;
use aws_sdk_dynamodb::Client as Ddb;
use aws_sdk_sqs::Client as Sqs;
use tracing::warn;

use super::item::{get_bool, get_n, get_s, n, s, unavailable, Item};
use crate::dedup::{decide, new_incident_id, Decision, DedupConfig, DedupRecord};
use crate::error::StoreError;
use crate::model::{Alert, AlertResult, AlertStatus, Provider, QueuedAlert};
use crate::ports::AlertLedger;

/// How many alerts of one request are handled at once.
const PARALLEL_ALERTS: usize = 16;

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

/// The table key of an alert, in its key namespace ([`crate::dedup::namespace`]). Tenant ids and
/// namespaces never contain `#`.
pub fn dedup_pk(tenant: &str, namespace: &str, source_alert_id: &str) -> String {
    format!("{tenant}#{namespace}#{source_alert_id}")
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
        // A stale pending record was never confirmed queued: the retry finishes its job under
        // its incident id, which the sender may already have been told and triage recorded.
        let existing = self.get(pk).await?.as_ref().and_then(record);
        match decide(existing.as_ref(), AlertStatus::Firing, now, || {
            msg.incident_id.clone()
        }) {
            Decision::Create { incident_id } => msg.incident_id = incident_id,
            other => return Ok(other),
        }
        let yes = aws_sdk_dynamodb::types::AttributeValue::Bool(true);
        // The one conditional put that decides who owns the key.
        let claimed = self
            .ddb
            .put_item()
            .table_name(&self.table)
            .item("pk", s(pk))
            .item("incidentId", s(&msg.incident_id))
            .item("pending", yes.clone())
            .item("leaseUntil", n(now + lease_ms))
            .item("expiresAt", n(now + ttl_ms))
            // DynamoDB's TTL deletes expired records eventually; `expiresAt` decides at once.
            .item("ttl", n((now + ttl_ms) / 1000 + 1))
            .condition_expression(
                "attribute_not_exists(pk) OR expiresAt <= :now OR (pending = :yes AND leaseUntil <= :now)",
            )
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":yes", yes)
            .return_values_on_condition_check_failure(OnFail::AllOld)
            .send()
            .await;
        if let Err(e) = claimed {
            let old = match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c)) => {
                    c.item.clone()
                }
                _ => return Err(unavailable("claim dedup record", e)),
            };
            let old = match old {
                Some(i) => Some(i),
                None => self.get(pk).await?,
            };
            let current = old.as_ref().and_then(record);
            return match decide(current.as_ref(), AlertStatus::Firing, now, new_incident_id) {
                // Changed between the read and the put: let the sender retry.
                Decision::Create { .. } => Err(StoreError::Unavailable(
                    "dedup record changed concurrently".into(),
                )),
                d => Ok(d),
            };
        }
        // The key is ours: from here on, any failure releases it before answering 503.
        if let Err(e) = self.send(msg).await {
            self.release(pk, &msg.incident_id).await;
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
            // The alert is queued, so it is acknowledged. A record left pending is taken over
            // after its lease under the same incident id, and a resolve still resolves it.
            warn!(error = %aws_sdk_dynamodb::error::DisplayErrorContext(e), "marking the dedup record queued failed");
        }
        Ok(Decision::Create {
            incident_id: msg.incident_id.clone(),
        })
    }

    /// Gives up a claim that could not be queued, so the sender's retry is not a duplicate.
    async fn release(&self, pk: &str, incident_id: &str) {
        let yes = aws_sdk_dynamodb::types::AttributeValue::Bool(true);
        let deleted = self
            .ddb
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .condition_expression("incidentId = :id AND pending = :yes")
            .expression_attribute_values(":id", s(incident_id))
            .expression_attribute_values(":yes", yes)
            .send()
            .await;
        if let Err(e) = deleted {
            warn!(error = %aws_sdk_dynamodb::error::DisplayErrorContext(e),
                  "releasing the pending record failed; a retry takes it over when its lease ends");
        }
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
        // A notification may carry hundreds of alerts: handle them side by side, not one
        // round-trip chain after another, and answer in the order they came.
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(PARALLEL_ALERTS));
        let mut set = tokio::task::JoinSet::new();
        for (i, alert) in alerts.iter().cloned().enumerate() {
            let (this, limit) = (self.clone(), limit.clone());
            let (tenant, received) = (tenant_id.to_owned(), received.clone());
            set.spawn(async move {
                let _permit = limit
                    .acquire_owned()
                    .await
                    .expect("semaphore is never closed");
                let ns = crate::dedup::namespace(provider, alert.unsigned);
                let pk = dedup_pk(&tenant, &ns, &alert.source_alert_id);
                let mut msg = QueuedAlert {
                    tenant_id: tenant,
                    provider,
                    incident_id: new_incident_id(),
                    alert: alert.clone(),
                    received_at: received,
                };
                let decision = match alert.status {
                    AlertStatus::Firing => this.fire(&pk, &mut msg, now).await,
                    AlertStatus::Resolved => this.resolve(&pk, &mut msg, now).await,
                    AlertStatus::Acknowledged => Ok(Decision::Acknowledge),
                    AlertStatus::Ignored => Ok(Decision::Ignore),
                };
                (i, alert.source_alert_id, decision)
            });
        }
        let mut slots: Vec<Option<AlertResult>> = vec![None; alerts.len()];
        let mut first_error = None;
        while let Some(joined) = set.join_next().await {
            let (i, source_alert_id, decision) =
                joined.map_err(|e| StoreError::Unavailable(format!("admit task: {e}")))?;
            match decision {
                Ok(d) => {
                    let (outcome, incident_id) = d.outcome();
                    slots[i] = Some(AlertResult {
                        source_alert_id,
                        incident_id: incident_id.map(str::to_owned),
                        outcome,
                    });
                }
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let results: Vec<AlertResult> = slots.into_iter().flatten().collect();
        Ok(results)
    }
}
