//! Incidents in DynamoDB and agent tasks on SNS. Incident writes are conditional so a
//! redelivered message changes nothing twice; each task is published at most once per `taskId`
//! through a marker in the dispatch table.

use async_trait::async_trait;
use aws_sdk_dynamodb::Client as Ddb;
use aws_sdk_sns::types::MessageAttributeValue;
use aws_sdk_sns::Client as Sns;

use super::item::{get_s, n, s, unavailable, Item};
use crate::error::StoreError;
use crate::model::{DispatchTask, Incident, IncidentStatus, TaskKind};
use crate::now_ms;
use crate::ports::{Dispatcher, IncidentPage, IncidentQuery, IncidentStore};

/// [`IncidentStore`] on the incidents table (`byStatus` index for status filters).
#[derive(Clone)]
pub struct DynamoIncidents {
    ddb: Ddb,
    table: String,
}

fn is_ccf<E>(e: &aws_sdk_dynamodb::error::SdkError<E>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error()
        .and_then(|se| se.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

fn decode(item: &Item) -> Result<Incident, StoreError> {
    let data = get_s(item, "data").unwrap_or_default();
    serde_json::from_str(&data)
        .map_err(|e| StoreError::Unavailable(format!("stored incident: {e}")))
}

impl DynamoIncidents {
    pub fn new(ddb: Ddb, table: &str) -> Self {
        DynamoIncidents {
            ddb,
            table: table.to_owned(),
        }
    }

    /// Writes `i` if no incident has its id (`was` = None) or if the stored one still has status
    /// `was`: a conditional write, so concurrent changes are never overwritten.
    async fn put(&self, i: &Incident, was: Option<IncidentStatus>) -> Result<bool, StoreError> {
        let data = serde_json::to_string(i).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut req = self
            .ddb
            .put_item()
            .table_name(&self.table)
            .item("tenantId", s(&i.tenant_id))
            .item("incidentId", s(&i.incident_id))
            .item("status", s(i.status.as_str()))
            .item(
                "statusKey",
                s(format!("{}#{}", i.tenant_id, i.status.as_str())),
            )
            .item("data", s(data))
            .expression_attribute_names("#s", "status");
        req = match was {
            None => req.condition_expression(NEW),
            Some(st) => req
                .condition_expression("#s = :was")
                .expression_attribute_values(":was", s(st.as_str())),
        };
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_ccf(&e) => Ok(false),
            Err(e) => Err(unavailable("put incident", e)),
        }
    }
}

/// DynamoDB rejects expression attribute names that the expression does not use.
const NEW: &str = "attribute_not_exists(incidentId) AND attribute_not_exists(#s)";

#[async_trait]
impl IncidentStore for DynamoIncidents {
    async fn open(&self, incident: Incident) -> Result<Incident, StoreError> {
        if self.put(&incident, None).await? {
            return Ok(incident);
        }
        self.get(&incident.tenant_id, &incident.incident_id)
            .await?
            .ok_or_else(|| StoreError::Unavailable("incident vanished while opening".into()))
    }

    async fn resolve(&self, incident: Incident) -> Result<Incident, StoreError> {
        for _ in 0..3 {
            match self.get(&incident.tenant_id, &incident.incident_id).await? {
                None => {
                    if self.put(&incident, None).await? {
                        return Ok(incident);
                    }
                }
                Some(existing) if existing.status == IncidentStatus::Resolved => {
                    return Ok(existing)
                }
                Some(mut existing) => {
                    let was = existing.status;
                    existing.status = IncidentStatus::Resolved;
                    existing.resolved_at = incident.resolved_at.clone();
                    existing.last_seen = incident.last_seen.clone();
                    if self.put(&existing, Some(was)).await? {
                        return Ok(existing);
                    }
                }
            }
        }
        Err(StoreError::Unavailable(
            "incident kept changing while resolving".into(),
        ))
    }

    async fn acknowledge(
        &self,
        tenant_id: &str,
        incident_id: &str,
        at: &str,
    ) -> Result<Option<Incident>, StoreError> {
        for _ in 0..3 {
            let Some(mut existing) = self.get(tenant_id, incident_id).await? else {
                return Ok(None);
            };
            if !existing.acknowledge(at) {
                return Ok(Some(existing));
            }
            if self.put(&existing, Some(IncidentStatus::Open)).await? {
                return Ok(Some(existing));
            }
        }
        Err(StoreError::Unavailable(
            "incident kept changing while acknowledging".into(),
        ))
    }

    async fn get(
        &self,
        tenant_id: &str,
        incident_id: &str,
    ) -> Result<Option<Incident>, StoreError> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.table)
            .key("tenantId", s(tenant_id))
            .key("incidentId", s(incident_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("get incident", e))?;
        out.item.as_ref().map(decode).transpose()
    }

    async fn list(&self, tenant_id: &str, q: &IncidentQuery) -> Result<IncidentPage, StoreError> {
        let limit = q.limit.clamp(1, 1000);
        let mut req = self
            .ddb
            .query()
            .table_name(&self.table)
            .scan_index_forward(false);
        let mut cond = match q.status {
            Some(st) => {
                req = req
                    .index_name("byStatus")
                    .expression_attribute_values(":k", s(format!("{tenant_id}#{}", st.as_str())));
                "statusKey = :k".to_owned()
            }
            None => {
                req = req.expression_attribute_values(":k", s(tenant_id));
                "tenantId = :k".to_owned()
            }
        };
        if let Some(c) = &q.cursor {
            cond.push_str(" AND incidentId < :c");
            req = req.expression_attribute_values(":c", s(c));
        }
        let items = req
            .key_condition_expression(cond)
            .into_paginator()
            .items()
            .send();
        let mut items = std::pin::pin!(items);
        let mut incidents = Vec::new();
        // Pull one more than asked to learn whether there is a next page.
        while incidents.len() <= limit {
            match items.next().await {
                Some(Ok(item)) => incidents.push(decode(&item)?),
                Some(Err(e)) => return Err(unavailable("list incidents", e)),
                None => break,
            }
        }
        Ok(IncidentPage::from_overfetch(incidents, limit))
    }
}

/// [`Dispatcher`] publishing to the agent-dispatch topic with attributes `agent`, `severity`,
/// `tenantId` (and `kind`), so each agent's queue subscribes with a filter policy.
#[derive(Clone)]
pub struct SnsDispatcher {
    ddb: Ddb,
    sns: Sns,
    table: String,
    topic_arn: String,
}

/// How long a publish in progress holds its marker before a redelivery may publish again.
const PUBLISH_LEASE_MS: i64 = 60_000;
/// Markers are kept long enough to outlive every redelivery (SQS keeps messages 4 days).
const MARKER_TTL_SECS: i64 = 14 * 24 * 3600;

impl SnsDispatcher {
    pub fn new(ddb: Ddb, sns: Sns, table: &str, topic_arn: &str) -> Self {
        SnsDispatcher {
            ddb,
            sns,
            table: table.to_owned(),
            topic_arn: topic_arn.to_owned(),
        }
    }
}

fn attr(v: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .expect("data type is set")
}

#[async_trait]
impl Dispatcher for SnsDispatcher {
    async fn dispatch(&self, task: &DispatchTask) -> Result<(), StoreError> {
        let now = now_ms();
        let claimed = self
            .ddb
            .put_item()
            .table_name(&self.table)
            .item("taskId", s(&task.task_id))
            .item("state", s("publishing"))
            .item("leaseUntil", n(now + PUBLISH_LEASE_MS))
            .item("ttl", n(now / 1000 + MARKER_TTL_SECS))
            .condition_expression(
                "attribute_not_exists(taskId) OR (#st = :publishing AND leaseUntil <= :now)",
            )
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":publishing", s("publishing"))
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        match claimed {
            Ok(_) => {}
            // Published already, or being published by a concurrent delivery of the message.
            Err(e) if is_ccf(&e) => return Ok(()),
            Err(e) => return Err(unavailable("claim dispatch", e)),
        }
        let body = serde_json::to_string(task).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let published = self
            .sns
            .publish()
            .topic_arn(&self.topic_arn)
            .message(body)
            .message_attributes("agent", attr(&task.agent))
            .message_attributes("severity", attr(task.severity.as_str()))
            .message_attributes("tenantId", attr(&task.tenant_id))
            .message_attributes(
                "kind",
                attr(match task.kind {
                    TaskKind::Dispatch => "dispatch",
                    TaskKind::Cancel => "cancel",
                }),
            )
            .send()
            .await;
        if let Err(e) = published {
            // Free the marker so the redelivery publishes.
            let _ = self
                .ddb
                .delete_item()
                .table_name(&self.table)
                .key("taskId", s(&task.task_id))
                .send()
                .await;
            return Err(StoreError::Unavailable(format!(
                "publish to the agent topic: {}",
                aws_sdk_sns::error::DisplayErrorContext(e)
            )));
        }
        self.ddb
            .update_item()
            .table_name(&self.table)
            .key("taskId", s(&task.task_id))
            .update_expression("SET #st = :published")
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":published", s("published"))
            .send()
            .await
            .map_err(|e| unavailable("mark dispatch published", e))?;
        Ok(())
    }
}
