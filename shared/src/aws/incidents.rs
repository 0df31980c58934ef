//! Incidents in DynamoDB and agent tasks on SNS. Incident writes are conditional so a
//! redelivered message changes nothing twice; each task is published at most once per `taskId`
//! through a marker in the dispatch table.

use async_trait::async_trait;
use aws_sdk_dynamodb::Client as Ddb;
use aws_sdk_sns::types::MessageAttributeValue;
use aws_sdk_sns::Client as Sns;

use super::item::{get_s, is_ccf, n, s, unavailable, Item};
use crate::error::StoreError;
use crate::model::{DispatchTask, Incident, IncidentStatus, TaskKind};
use crate::now_ms;
use crate::ports::{
    Dispatcher, IncidentPage, IncidentQuery, IncidentStore, TaskLog, TaskRecord, MAX_EXAMINED,
};

/// [`IncidentStore`] on the incidents table (`byStatus` index for status filters).
#[derive(Clone)]
pub struct DynamoIncidents {
    ddb: Ddb,
    table: String,
    /// Readers merge duplicate counts; triage, which writes incidents, leaves them out.
    duplicates: Option<super::duplicates::DuplicateCounts>,
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
            duplicates: None,
        }
    }

    /// Reads merge the duplicate counts that admission keeps in the dedup table.
    pub fn with_duplicate_counts(mut self, dedup_table: &str) -> Self {
        self.duplicates = Some(super::duplicates::DuplicateCounts::new(
            self.ddb.clone(),
            dedup_table,
        ));
        self
    }

    async fn merge(&self, tenant: &str, incidents: &mut [Incident]) -> Result<(), StoreError> {
        let Some(d) = &self.duplicates else {
            return Ok(());
        };
        let ids: Vec<&str> = incidents.iter().map(|i| i.incident_id.as_str()).collect();
        let counts = d.read(tenant, &ids).await?;
        for i in incidents {
            match counts.get(&i.incident_id) {
                Some((c, at)) => i.with_duplicates(*c, Some(*at)),
                None => i.with_duplicates(0, None),
            }
        }
        Ok(())
    }

    async fn get_raw(
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
        let mut i = self.get_raw(tenant_id, incident_id).await?;
        if let Some(i) = &mut i {
            self.merge(tenant_id, std::slice::from_mut(i)).await?;
        }
        Ok(i)
    }

    async fn list(&self, tenant_id: &str, q: &IncidentQuery) -> Result<IncidentPage, StoreError> {
        let mut page = self.list_raw(tenant_id, q).await?;
        self.merge(tenant_id, &mut page.incidents).await?;
        Ok(page)
    }
}

impl DynamoIncidents {
    async fn list_raw(
        &self,
        tenant_id: &str,
        q: &IncidentQuery,
    ) -> Result<IncidentPage, StoreError> {
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
        req = req.key_condition_expression(cond);
        if !q.filters() {
            // One page of one more than asked: DynamoDB reads no further than it returns.
            let items = req
                .limit((limit + 1) as i32)
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
            return Ok(IncidentPage::from_overfetch(incidents, limit));
        }
        // Filters are applied here, not by DynamoDB (the incident is one JSON attribute): walk
        // newest first, examining at most MAX_EXAMINED items, as the SQLite store does. Each page
        // asks for no more than is still wanted (one past the cap, to learn whether any remain),
        // so a request never reads more than that from the table.
        let cap = MAX_EXAMINED;
        let (mut matches, mut read, mut last) = (Vec::new(), 0, None);
        let mut start = None;
        'pages: loop {
            let out = req
                .clone()
                .limit((cap + 1 - read) as i32)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("list incidents", e))?;
            for item in out.items.unwrap_or_default() {
                if read == cap {
                    return Ok(IncidentPage::filtered(matches, limit, last, true));
                }
                read += 1;
                let i = decode(&item)?;
                last = Some(i.incident_id.clone());
                if q.matches(&i) {
                    matches.push(i);
                    if matches.len() > limit {
                        break 'pages;
                    }
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        Ok(IncidentPage::filtered(matches, limit, last, false))
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
            .message_attributes("kind", attr(task.kind.as_str()))
            .send()
            .await;
        crate::telemetry::dispatch_attempt(published.is_ok());
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

/// Most keys one `BatchGetItem` call takes (DynamoDB's limit).
const BATCH_GET_KEYS: usize = 100;
/// Calls one chunk may take when DynamoDB hands back unprocessed keys (throttling).
const BATCH_GET_ROUNDS: u32 = 4;

/// [`TaskLog`] for the AWS host. Triage keeps no per-incident task list there: an incident's
/// tasks follow from its agents (stable task ids), and where each stands is the publish marker
/// [`SnsDispatcher`] keeps in the dispatch table. Markers expire after 14 days (DynamoDB TTL), so
/// an older incident's tasks read `pending` again.
#[derive(Clone)]
pub struct DynamoTaskLog {
    ddb: Ddb,
    incidents: DynamoIncidents,
    dispatch_table: String,
}

impl DynamoTaskLog {
    /// Reads incidents from `incidents_table` and markers from `dispatch_table`.
    pub fn new(ddb: Ddb, incidents_table: &str, dispatch_table: &str) -> Self {
        DynamoTaskLog {
            incidents: DynamoIncidents::new(ddb.clone(), incidents_table),
            ddb,
            dispatch_table: dispatch_table.to_owned(),
        }
    }

    /// The `state` of each marker among `task_ids` that exists.
    async fn markers(
        &self,
        task_ids: &[String],
    ) -> Result<std::collections::HashMap<String, String>, StoreError> {
        use aws_sdk_dynamodb::types::KeysAndAttributes;
        let mut found = std::collections::HashMap::new();
        for chunk in task_ids.chunks(BATCH_GET_KEYS) {
            let mut keys: Vec<Item> = chunk
                .iter()
                .map(|id| Item::from([("taskId".to_owned(), s(id))]))
                .collect();
            for round in 0..BATCH_GET_ROUNDS {
                if keys.is_empty() {
                    break;
                }
                if round > 0 {
                    // DynamoDB hands back what it could not read when throttled: back off.
                    tokio::time::sleep(std::time::Duration::from_millis(20 << round)).await;
                }
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut keys)))
                    .projection_expression("taskId, #st")
                    .expression_attribute_names("#st", "state")
                    .build()
                    .map_err(|e| unavailable("batch get dispatch markers", e))?;
                let out = self
                    .ddb
                    .batch_get_item()
                    .request_items(&self.dispatch_table, request)
                    .send()
                    .await
                    .map_err(|e| unavailable("batch get dispatch markers", e))?;
                for item in out
                    .responses
                    .unwrap_or_default()
                    .remove(&self.dispatch_table)
                    .unwrap_or_default()
                {
                    if let (Some(id), Some(state)) = (get_s(&item, "taskId"), get_s(&item, "state"))
                    {
                        found.insert(id, state);
                    }
                }
                keys = out
                    .unprocessed_keys
                    .unwrap_or_default()
                    .remove(&self.dispatch_table)
                    .map(|k| k.keys)
                    .unwrap_or_default();
            }
            if !keys.is_empty() {
                return Err(StoreError::Unavailable(
                    "dispatch markers could not be read (throttled)".into(),
                ));
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl TaskLog for DynamoTaskLog {
    async fn tasks(
        &self,
        tenant_id: &str,
        incident_id: &str,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let Some(incident) = self.incidents.get(tenant_id, incident_id).await? else {
            return Ok(Vec::new());
        };
        // Investigations first, then cancels: the order triage sends them in.
        let mut kinds = vec![TaskKind::Dispatch];
        if incident.status == IncidentStatus::Resolved {
            kinds.push(TaskKind::Cancel);
        }
        let (id, agents) = (&incident.incident_id, &incident.agents);
        let tasks: Vec<(String, &String, TaskKind)> = kinds
            .iter()
            .flat_map(|&kind| {
                agents
                    .iter()
                    .map(move |agent| (crate::triage::task_id(id, agent, kind), agent, kind))
            })
            .collect();
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = tasks.iter().map(|(id, _, _)| id.clone()).collect();
        let markers = self.markers(&ids).await?;
        Ok(tasks
            .into_iter()
            .map(|(task_id, agent, kind)| TaskRecord {
                // `publishing` is a publish in progress (or one that died and will be retried
                // by the message's redelivery): not handed over yet.
                state: match markers.get(&task_id).map(String::as_str) {
                    Some("published") => "published",
                    _ => "pending",
                }
                .into(),
                task_id,
                agent: agent.clone(),
                kind: match kind {
                    TaskKind::Dispatch => "investigate",
                    TaskKind::Cancel => "cancel",
                }
                .into(),
                attempts: None,
                at: None,
            })
            .collect())
    }
}
