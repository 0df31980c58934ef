//! The dedup lifecycle on DynamoDB + SQS (docs/architecture.md#the-admission-protocol). A request's
//! alerts are admitted with batched calls, so a full request fits well within the ingest function's
//! timeout:
//!
//! 1. one consistent `BatchGetItem` per 100 keys reads the alerts' dedup records;
//! 2. each new incident claims its key with a conditional put (absent, expired, or a pending
//!    lease that ran out), up to 100 in one `TransactWriteItems`, transactions one after another;
//! 3. the claimed alerts and the resolves go to SQS in `SendMessageBatch` calls of up to ten;
//! 4. the claims are marked queued, and resolved keys are released.
//!
//! A claim whose send fails is released and answered 503, so the sender's retry succeeds. A
//! resolve is queued before its record is deleted, so a failure never loses it. A claim still
//! pending under a live lease belongs to a request in flight (or one that died after its put):
//! it is answered 503 with the lease's remaining time, never 409, which senders count as
//! delivered.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, ReturnValuesOnConditionCheckFailure as OnFail,
};
use aws_sdk_dynamodb::Client as Ddb;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_sdk_sqs::Client as Sqs;
use tracing::warn;

use super::item::{get_bool, get_n, get_s, n, s, unavailable, Item};
use crate::dedup::{decide, namespace, new_incident_id, Decision, DedupConfig, DedupRecord};
use crate::error::StoreError;
use crate::model::{Alert, AlertResult, AlertStatus, Outcome, Provider, QueuedAlert};
use crate::ports::{AlertLedger, KeyRelease};

/// Conditional writes of one request in flight at once.
const PARALLEL_WRITES: usize = 32;
/// Keys per `BatchGetItem` (DynamoDB's limit).
const BATCH_GET_KEYS: usize = 100;
/// Entries per `SendMessageBatch` (SQS's limit) ...
const SEND_BATCH_ENTRIES: usize = 10;
/// ... and bytes of message bodies per call (SQS's limit on a batch's total payload).
const SEND_BATCH_BYTES: usize = 256 * 1024;
/// Updates per `TransactWriteItems` (DynamoDB's limit).
const TRANSACT_ITEMS: usize = 100;
/// Rounds of `UnprocessedKeys` retried before the request is answered 503.
const BATCH_GET_ROUNDS: usize = 5;

/// [`AlertLedger`] on the dedup table and the alert queue.
#[derive(Clone)]
pub struct DynamoLedger {
    keys: DynamoDedupKeys,
    duplicates: super::duplicates::DuplicateCounts,
    sqs: Sqs,
    queue_url: String,
    config: DedupConfig,
    crash_after_claim: Arc<AtomicBool>,
}

/// The dedup table's keys alone: what releasing a dead-lettered alert's key needs (triage has
/// no business with the queue).
#[derive(Clone)]
pub struct DynamoDedupKeys {
    ddb: Ddb,
    table: String,
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

/// The table key of a queued alert.
fn msg_pk(msg: &QueuedAlert) -> String {
    dedup_pk(
        &msg.tenant_id,
        &namespace(msg.provider, msg.alert.unsigned),
        &msg.alert.source_alert_id,
    )
}

/// A key may be claimed when it is free, expired, or pending under a lease that ran out.
const CLAIM_CONDITION: &str =
    "attribute_not_exists(pk) OR expiresAt <= :now OR (pending = :yes AND leaseUntil <= :now)";

/// Taking over a stale pending claim (same incident id) needs that very record still there: if a
/// resolve released the key meanwhile, a takeover on the empty key would answer 202 for an
/// incident the resolve closes, and hold the key for it. Found by the model checker
/// (docs/protocol-model.md).
const TAKEOVER_CONDITION: &str = "incidentId = :id AND pending = :yes AND leaseUntil <= :now";

/// Marks a claimed record queued, provided it still names the claim's incident
/// ([`NAMES_INCIDENT`]; a resolve may have raced the claim).
const MARK_QUEUED: &str = "SET pending = :no";
const NAMES_INCIDENT: &str = "incidentId = :id";

fn mark_values(incident_id: &str) -> Item {
    HashMap::from([
        (":id".to_owned(), s(incident_id)),
        (":no".to_owned(), AttributeValue::Bool(false)),
    ])
}

/// The condition of `p`'s claim and the values it names.
fn claim_condition(p: &Pending, now: i64) -> (&'static str, Item) {
    let mut values = HashMap::from([
        (":now".to_owned(), n(now)),
        (":yes".to_owned(), AttributeValue::Bool(true)),
    ]);
    if p.takeover {
        values.insert(":id".to_owned(), s(&p.msg.incident_id));
        (TAKEOVER_CONDITION, values)
    } else {
        (CLAIM_CONDITION, values)
    }
}

/// What a claim that lost to the record `old` answers. A record naming our own incident is our
/// claim: the SDK retried a call that had succeeded.
fn held(old: Option<&Item>, ours: &str, now: i64) -> Result<Option<Decision>, StoreError> {
    let current = old.and_then(record);
    if current.as_ref().is_some_and(|r| r.incident_id == ours) {
        return Ok(None);
    }
    match decide(current.as_ref(), AlertStatus::Firing, now, new_incident_id) {
        // Changed between the read and the put: let the sender retry.
        Decision::Create { .. } => Err(StoreError::Unavailable(
            "dedup record changed concurrently".into(),
        )),
        d => Ok(Some(d)),
    }
}

/// Runs `f` over `items` with at most [`PARALLEL_WRITES`] at once; results in input order, `None`
/// where a task panicked (callers treat that as a failure).
async fn bounded<T, R, F, Fut>(items: Vec<T>, f: F) -> Vec<Option<R>>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: Future<Output = R> + Send + 'static,
{
    let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL_WRITES));
    let mut set = tokio::task::JoinSet::new();
    let count = items.len();
    for (i, item) in items.into_iter().enumerate() {
        let (limit, fut) = (limit.clone(), f(item));
        set.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("never closed");
            (i, fut.await)
        });
    }
    let mut out: Vec<Option<R>> = (0..count).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, r)) => out[i] = Some(r),
            Err(e) => warn!(error = %e, "a dedup write task failed"),
        }
    }
    out
}

/// One alert of the request on its way through admission.
struct Pending {
    index: usize,
    pk: String,
    msg: QueuedAlert,
    /// The claim takes over a stale pending record under its incident id.
    takeover: bool,
}

impl DynamoDedupKeys {
    pub fn new(ddb: Ddb, table: &str) -> Self {
        DynamoDedupKeys {
            ddb,
            table: table.to_owned(),
        }
    }

    /// Reads the records of `pks` with consistent reads, 100 keys a call.
    async fn read(&self, pks: &[String]) -> Result<HashMap<String, DedupRecord>, StoreError> {
        let mut found = HashMap::new();
        for chunk in pks.chunks(BATCH_GET_KEYS) {
            let mut keys: Vec<Item> = chunk
                .iter()
                .map(|pk| HashMap::from([("pk".to_owned(), s(pk))]))
                .collect();
            for round in 0..BATCH_GET_ROUNDS {
                if keys.is_empty() {
                    break;
                }
                if round > 0 {
                    // DynamoDB hands back what it could not read when throttled: back off.
                    tokio::time::sleep(Duration::from_millis(20 << round)).await;
                }
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut keys)))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| unavailable("batch get dedup records", e))?;
                let out = self
                    .ddb
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(|e| unavailable("batch get dedup records", e))?;
                for item in out
                    .responses
                    .unwrap_or_default()
                    .remove(&self.table)
                    .unwrap_or_default()
                {
                    if let (Some(pk), Some(r)) = (get_s(&item, "pk"), record(&item)) {
                        found.insert(pk, r);
                    }
                }
                keys = out
                    .unprocessed_keys
                    .unwrap_or_default()
                    .remove(&self.table)
                    .map(|k| k.keys)
                    .unwrap_or_default();
            }
            if !keys.is_empty() {
                return Err(StoreError::Unavailable(
                    "dedup records could not be read (throttled)".into(),
                ));
            }
        }
        Ok(found)
    }

    /// Deletes the record of `pk` if it still names `incident_id` (and, with `pending_only`,
    /// only while it is pending). A record that moved on is left alone.
    async fn delete(
        &self,
        pk: &str,
        incident_id: &str,
        pending_only: bool,
    ) -> Result<(), StoreError> {
        let mut req = self
            .ddb
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .expression_attribute_values(":id", s(incident_id));
        req = if pending_only {
            req.condition_expression("incidentId = :id AND pending = :yes")
                .expression_attribute_values(":yes", AttributeValue::Bool(true))
        } else {
            req.condition_expression("incidentId = :id")
        };
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(unavailable("release dedup record", e)),
        }
    }
}

#[async_trait]
impl KeyRelease for DynamoDedupKeys {
    async fn release(&self, msg: &QueuedAlert) -> Result<(), StoreError> {
        self.delete(&msg_pk(msg), &msg.incident_id, false).await
    }
}

impl DynamoLedger {
    pub fn new(ddb: Ddb, sqs: Sqs, table: &str, queue_url: &str, config: DedupConfig) -> Self {
        DynamoLedger {
            duplicates: super::duplicates::DuplicateCounts::new(ddb.clone(), table),
            keys: DynamoDedupKeys::new(ddb, table),
            sqs,
            queue_url: queue_url.to_owned(),
            config,
            crash_after_claim: Arc::default(),
        }
    }

    /// Test hook: while set, `admit` stops right after its conditional puts, sending nothing and
    /// releasing nothing, as an ingest invocation that died there would.
    pub fn crash_after_claim(&self) -> Arc<AtomicBool> {
        self.crash_after_claim.clone()
    }

    /// The pending record a claim writes.
    fn claim_item(&self, p: &Pending, now: i64) -> Item {
        let ttl_ms = self.config.ttl.as_millis() as i64;
        let lease_ms = self.config.lease.as_millis() as i64;
        HashMap::from([
            ("pk".to_owned(), s(&p.pk)),
            ("incidentId".to_owned(), s(&p.msg.incident_id)),
            ("pending".to_owned(), AttributeValue::Bool(true)),
            ("leaseUntil".to_owned(), n(now + lease_ms)),
            ("expiresAt".to_owned(), n(now + ttl_ms)),
            // DynamoDB's TTL deletes expired records eventually; `expiresAt` decides at once.
            ("ttl".to_owned(), n((now + ttl_ms) / 1000 + 1)),
        ])
    }

    /// Claims the keys of new incidents: the one conditional put per key that decides who owns
    /// it, up to 100 in a transaction. Each result is `Ok(None)` when claimed, or `Ok(Some(d))`
    /// when someone else holds the key and `d` says how. A transaction cancelled because some
    /// keys are held reports which; the rest are claimed in the next one.
    async fn claim_all(
        &self,
        claims: Vec<Pending>,
        now: i64,
    ) -> Vec<(Pending, Result<Option<Decision>, StoreError>)> {
        let mut chunks: Vec<Vec<Pending>> = Vec::new();
        for p in claims {
            match chunks.last_mut() {
                Some(c) if c.len() < TRANSACT_ITEMS => c.push(p),
                _ => chunks.push(vec![p]),
            }
        }
        // One transaction after another: they touch disjoint keys, but a request's writes are
        // few enough (5 for 500 alerts) that running them side by side gains little.
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(self.claim_chunk(chunk, now).await);
        }
        out
    }

    async fn claim_chunk(
        &self,
        mut open: Vec<Pending>,
        now: i64,
    ) -> Vec<(Pending, Result<Option<Decision>, StoreError>)> {
        let mut done = Vec::with_capacity(open.len());
        if open.len() == 1 {
            // A transaction of one costs twice the writes of a plain put and gains nothing.
            let p = open.remove(0);
            let r = self.claim(&p, now).await;
            return vec![(p, r)];
        }
        while !open.is_empty() {
            let items: Vec<aws_sdk_dynamodb::types::TransactWriteItem> = open
                .iter()
                .filter_map(|p| {
                    let (condition, values) = claim_condition(p, now);
                    let put = aws_sdk_dynamodb::types::Put::builder()
                        .table_name(&self.keys.table)
                        .set_item(Some(self.claim_item(p, now)))
                        .condition_expression(condition)
                        .set_expression_attribute_values(Some(values))
                        .return_values_on_condition_check_failure(OnFail::AllOld)
                        .build()
                        .ok()?;
                    Some(
                        aws_sdk_dynamodb::types::TransactWriteItem::builder()
                            .put(put)
                            .build(),
                    )
                })
                .collect();
            let items_len = items.len();
            let sent = self
                .keys
                .ddb
                .transact_write_items()
                // Makes the SDK's own retry of this call idempotent.
                .client_request_token(uuid::Uuid::new_v4().to_string())
                .set_transact_items(Some(items))
                .send()
                .await;
            let reasons = match sent {
                Ok(_) => {
                    done.extend(open.drain(..).map(|p| (p, Ok(None))));
                    break;
                }
                Err(e) => match e.into_service_error() {
                    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c) => {
                        c.cancellation_reasons().to_vec()
                    }
                    _ => Vec::new(),
                },
            };
            if reasons.len() != open.len() {
                // Not a per-item answer (throttled, conflicting transaction): one put each.
                for p in open.drain(..) {
                    let r = self.claim(&p, now).await;
                    done.push((p, r));
                }
                break;
            }
            let mut retry = Vec::new();
            for (p, reason) in open.drain(..).zip(reasons) {
                if reason.code() == Some("ConditionalCheckFailed") {
                    let r = held(reason.item.as_ref(), &p.msg.incident_id, now);
                    done.push((p, r));
                } else {
                    retry.push(p);
                }
            }
            let none_held = retry.len() == items_len;
            if none_held {
                // Nothing was held, yet the transaction failed: one put each.
                for p in retry {
                    let r = self.claim(&p, now).await;
                    done.push((p, r));
                }
                break;
            }
            open = retry;
        }
        done
    }

    /// One claim on its own (the fallback of [`Self::claim_all`]).
    async fn claim(&self, p: &Pending, now: i64) -> Result<Option<Decision>, StoreError> {
        let claimed = self
            .keys
            .ddb
            .put_item()
            .table_name(&self.keys.table)
            .set_item(Some(self.claim_item(p, now)))
            .condition_expression(claim_condition(p, now).0)
            .set_expression_attribute_values(Some(claim_condition(p, now).1))
            .return_values_on_condition_check_failure(OnFail::AllOld)
            .send()
            .await;
        let Err(e) = claimed else {
            return Ok(None);
        };
        match e.as_service_error() {
            Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c)) => {
                held(c.item.as_ref(), &p.msg.incident_id, now)
            }
            _ => Err(unavailable("claim dedup record", e)),
        }
    }

    /// Marks a claimed, queued record as queued. A failure is only logged: the alert is queued,
    /// so it is acknowledged, and a record left pending is taken over after its lease under the
    /// same incident id (and a resolve still resolves it).
    async fn mark_queued(&self, pk: &str, incident_id: &str) {
        let marked = self
            .keys
            .ddb
            .update_item()
            .table_name(&self.keys.table)
            .key("pk", s(pk))
            .update_expression(MARK_QUEUED)
            .condition_expression(NAMES_INCIDENT)
            .set_expression_attribute_values(Some(mark_values(incident_id)))
            .send()
            .await;
        if let Err(e) = marked {
            warn!(error = %aws_sdk_dynamodb::error::DisplayErrorContext(e), "marking the dedup record queued failed");
        }
    }

    /// Marks claimed, queued records as queued, 100 to a transaction, each still conditional on
    /// naming its incident. A transaction that fails (one record moved on: a resolve raced the
    /// claim) falls back to one update per record, so the others are still marked.
    async fn mark_all_queued(&self, marks: Vec<(String, String)>) {
        let chunks: Vec<Vec<(String, String)>> =
            marks.chunks(TRANSACT_ITEMS).map(<[_]>::to_vec).collect();
        for chunk in chunks {
            if let [(pk, id)] = chunk.as_slice() {
                self.mark_queued(pk, id).await;
                continue;
            }
            let items: Vec<aws_sdk_dynamodb::types::TransactWriteItem> = chunk
                .iter()
                .filter_map(|(pk, id)| {
                    let update = aws_sdk_dynamodb::types::Update::builder()
                        .table_name(&self.keys.table)
                        .key("pk", s(pk))
                        .update_expression(MARK_QUEUED)
                        .condition_expression(NAMES_INCIDENT)
                        .set_expression_attribute_values(Some(mark_values(id)))
                        .build()
                        .ok()?;
                    Some(
                        aws_sdk_dynamodb::types::TransactWriteItem::builder()
                            .update(update)
                            .build(),
                    )
                })
                .collect();
            let together = self
                .keys
                .ddb
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await;
            if together.is_err() {
                for (pk, id) in &chunk {
                    self.mark_queued(pk, id).await;
                }
            }
        }
    }

    /// Sends `msgs` in as few `SendMessageBatch` calls as the limits allow; returns the indices
    /// (into `msgs`) that were not sent.
    async fn send_all(&self, msgs: &[&QueuedAlert]) -> HashSet<usize> {
        let bodies: Vec<String> = msgs.iter().map(|m| m.to_queue_body()).collect();
        let mut batches: Vec<Vec<usize>> = Vec::new();
        let mut size = 0;
        for (i, body) in bodies.iter().enumerate() {
            let full = batches.last().is_none_or(|b| {
                b.len() == SEND_BATCH_ENTRIES || size + body.len() > SEND_BATCH_BYTES
            });
            if full {
                batches.push(Vec::new());
                size = 0;
            }
            batches.last_mut().expect("pushed above").push(i);
            size += body.len();
        }
        let this = self.clone();
        let bodies = Arc::new(bodies);
        let sent = bounded(batches.clone(), move |batch| {
            let (this, bodies) = (this.clone(), bodies.clone());
            async move {
                let entries: Vec<SendMessageBatchRequestEntry> = batch
                    .iter()
                    .filter_map(|&i| {
                        SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(&bodies[i])
                            .build()
                            .ok()
                    })
                    .collect();
                let out = this
                    .sqs
                    .send_message_batch()
                    .queue_url(&this.queue_url)
                    .set_entries(Some(entries))
                    .send()
                    .await;
                match out {
                    Ok(out) => out
                        .failed
                        .iter()
                        .filter_map(|f| {
                            warn!(code = %f.code, "an alert was not queued");
                            f.id.parse::<usize>().ok()
                        })
                        .collect::<Vec<_>>(),
                    Err(e) => {
                        warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(e), "send to the alert queue failed");
                        batch
                    }
                }
            }
        })
        .await;
        // A batch whose task died counts as unsent, all of it.
        sent.into_iter()
            .zip(batches)
            .flat_map(|(r, batch)| r.unwrap_or(batch))
            .collect()
    }

    /// Admits alerts whose keys are all distinct.
    async fn admit_distinct(
        &self,
        alerts: Vec<Pending>,
        now: i64,
        results: &mut [Option<Result<Decision, StoreError>>],
    ) {
        let live: Vec<String> = alerts
            .iter()
            .filter(|p| {
                matches!(
                    p.msg.alert.status,
                    AlertStatus::Firing | AlertStatus::Resolved | AlertStatus::Acknowledged
                )
            })
            .map(|p| p.pk.clone())
            .collect();
        let records = match self.keys.read(&live).await {
            Ok(r) => r,
            Err(e) => {
                for p in &alerts {
                    results[p.index] = Some(Err(e.clone()));
                }
                return;
            }
        };
        let mut claims = Vec::new();
        // Resolves and acknowledgements: sent as they are; a resolve then releases its key.
        let mut resolves = Vec::new();
        for mut p in alerts {
            let existing = records.get(&p.pk);
            let fresh = p.msg.incident_id.clone();
            match decide(existing, p.msg.alert.status, now, || fresh) {
                Decision::Create { incident_id } => {
                    p.takeover = incident_id != p.msg.incident_id;
                    p.msg.incident_id = incident_id;
                    claims.push(p);
                }
                Decision::Resolve { incident_id }
                | Decision::Acknowledge {
                    incident_id: Some(incident_id),
                } => {
                    p.msg.incident_id = incident_id;
                    resolves.push(p);
                }
                Decision::InFlight { retry_after, .. } => {
                    results[p.index] = Some(Err(StoreError::InFlight { retry_after }))
                }
                d => results[p.index] = Some(Ok(d)),
            }
        }

        // 2. Claims, 100 to a transaction.
        let claimed = self.claim_all(claims, now).await;
        let mut to_send: Vec<Pending> = Vec::new();
        for (p, r) in claimed {
            match r {
                Ok(None) => to_send.push(p),
                Ok(Some(Decision::InFlight { retry_after, .. })) => {
                    results[p.index] = Some(Err(StoreError::InFlight { retry_after }))
                }
                Ok(Some(d)) => results[p.index] = Some(Ok(d)),
                Err(e) => results[p.index] = Some(Err(e)),
            }
        }
        if self.crash_after_claim.load(Ordering::SeqCst) {
            for p in to_send.iter().chain(&resolves) {
                results[p.index] = Some(Err(StoreError::Unavailable("crashed (test hook)".into())));
            }
            return;
        }

        // 3. One queue message per claim and per resolve, in batches.
        let claim_count = to_send.len();
        to_send.extend(resolves);
        let msgs: Vec<&QueuedAlert> = to_send.iter().map(|p| &p.msg).collect();
        let unsent = Arc::new(self.send_all(&msgs).await);

        // 4. Mark what was queued; release the claims that were not and the resolved keys.
        let marks: Vec<(String, String)> = to_send[..claim_count]
            .iter()
            .enumerate()
            .filter(|(i, _)| !unsent.contains(i))
            .map(|(_, p)| (p.pk.clone(), p.msg.incident_id.clone()))
            .collect();
        self.mark_all_queued(marks).await;
        let this = self.clone();
        let finished = bounded(to_send.into_iter().enumerate().collect(), move |(i, p)| {
            let this = this.clone();
            let sent = !unsent.contains(&i);
            let _ = &unsent;
            async move {
                let is_claim = i < claim_count;
                let r = match (is_claim, sent) {
                    (true, true) => Ok(Decision::Create {
                        incident_id: p.msg.incident_id.clone(),
                    }),
                    (true, false) => {
                        // The key is ours: give it up before answering 503, so the retry
                        // is not a duplicate. If even that fails, the lease runs out.
                        if let Err(e) = this.keys.delete(&p.pk, &p.msg.incident_id, true).await {
                            warn!(error = %e, "releasing an unqueued claim failed; its lease will run out");
                        }
                        Err(StoreError::Unavailable("send to the alert queue failed".into()))
                    }
                    (false, true) if p.msg.alert.status == AlertStatus::Acknowledged => {
                        Ok(Decision::Acknowledge {
                            incident_id: Some(p.msg.incident_id.clone()),
                        })
                    }
                    (false, true) => this
                        .keys
                        .delete(&p.pk, &p.msg.incident_id, false)
                        .await
                        .map(|()| Decision::Resolve {
                            incident_id: p.msg.incident_id.clone(),
                        }),
                    (false, false) => Err(StoreError::Unavailable(
                        "send to the alert queue failed".into(),
                    )),
                };
                (p.index, r)
            }
        })
        .await;
        for (i, r) in finished.into_iter().flatten() {
            results[i] = Some(r);
        }
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
        let request_id = crate::http::observe::current_request_id();
        let mut results: Vec<Option<Result<Decision, StoreError>>> = vec![None; alerts.len()];
        let mut pending: Vec<Pending> = alerts
            .iter()
            .enumerate()
            .map(|(index, alert)| {
                let msg = QueuedAlert {
                    tenant_id: tenant_id.to_owned(),
                    provider,
                    incident_id: new_incident_id(),
                    alert: alert.clone(),
                    received_at: received.clone(),
                    request_id: request_id.clone(),
                };
                Pending {
                    index,
                    pk: msg_pk(&msg),
                    msg,
                    takeover: false,
                }
            })
            .collect();
        // Alerts are applied in request order; one whose key an earlier alert of the request
        // also names waits for the next round, so it sees that alert's effect.
        while !pending.is_empty() {
            let mut seen = HashSet::new();
            let (round, later): (Vec<Pending>, Vec<Pending>) =
                pending.into_iter().partition(|p| seen.insert(p.pk.clone()));
            self.admit_distinct(round, now, &mut results).await;
            pending = later;
        }
        // Each 409 is counted on its incident (best effort: the answer stands either way).
        let duplicates: Vec<String> = results
            .iter()
            .filter_map(|r| match r {
                Some(Ok(Decision::Duplicate { incident_id })) => Some(incident_id.clone()),
                _ => None,
            })
            .collect();
        if !duplicates.is_empty() {
            self.duplicates.count(tenant_id, &duplicates, now).await;
        }
        let mut out = Vec::with_capacity(alerts.len());
        let mut first_error = None;
        for (alert, r) in alerts.iter().zip(results) {
            match r.unwrap_or_else(|| Err(StoreError::Unavailable("admission task failed".into())))
            {
                Ok(d) => {
                    let (outcome, incident_id) = d.outcome();
                    out.push(AlertResult {
                        source_alert_id: alert.source_alert_id.clone(),
                        incident_id: incident_id.map(str::to_owned),
                        outcome,
                    });
                }
                Err(e) => first_error = Some(worse(first_error, e)),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    async fn requeue(&self, msg: &QueuedAlert) -> Result<AlertResult, StoreError> {
        let now = crate::now_ms();
        let pk = msg_pk(msg);
        match msg.alert.status {
            AlertStatus::Firing => self.requeue_firing(msg, &pk, now).await,
            AlertStatus::Resolved => {
                self.send_one(msg).await?;
                self.keys.delete(&pk, &msg.incident_id, false).await?;
                Ok(AlertResult {
                    source_alert_id: msg.alert.source_alert_id.clone(),
                    incident_id: Some(msg.incident_id.clone()),
                    outcome: Outcome::Resolved,
                })
            }
            AlertStatus::Acknowledged => {
                self.send_one(msg).await?;
                Ok(AlertResult {
                    source_alert_id: msg.alert.source_alert_id.clone(),
                    incident_id: Some(msg.incident_id.clone()),
                    outcome: Outcome::Acknowledged,
                })
            }
            _ => Ok(AlertResult {
                source_alert_id: msg.alert.source_alert_id.clone(),
                incident_id: None,
                outcome: Outcome::Ignored,
            }),
        }
    }
}

/// The condition under which a dead-lettered firing takes its key back: the key is free,
/// expired, abandoned, or still its own.
const REQUEUE_CONDITION: &str =
    "attribute_not_exists(pk) OR expiresAt <= :now OR incidentId = :id \
     OR (pending = :yes AND leaseUntil <= :now)";

impl DynamoLedger {
    async fn requeue_firing(
        &self,
        msg: &QueuedAlert,
        pk: &str,
        now: i64,
    ) -> Result<AlertResult, StoreError> {
        let ttl_ms = self.config.ttl.as_millis() as i64;
        let values = HashMap::from([
            (":now".to_owned(), n(now)),
            (":yes".to_owned(), AttributeValue::Bool(true)),
            (":id".to_owned(), s(&msg.incident_id)),
        ]);
        let put = self
            .keys
            .ddb
            .put_item()
            .table_name(&self.keys.table)
            .item("pk", s(pk))
            .item("incidentId", s(&msg.incident_id))
            .item("pending", AttributeValue::Bool(false))
            .item("leaseUntil", n(now))
            .item("expiresAt", n(now + ttl_ms))
            .item("ttl", n((now + ttl_ms) / 1000 + 1))
            .condition_expression(REQUEUE_CONDITION)
            .set_expression_attribute_values(Some(values))
            .return_values_on_condition_check_failure(OnFail::AllOld)
            .send()
            .await;
        if let Err(e) = put {
            let old = match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c)) => c.item.clone(),
                _ => return Err(unavailable("take the key back", e)),
            };
            let holder = old.as_ref().and_then(record).map(|r| r.incident_id);
            return Ok(AlertResult {
                source_alert_id: msg.alert.source_alert_id.clone(),
                incident_id: holder,
                outcome: Outcome::Duplicate,
            });
        }
        // If the send fails the key names this incident, so the next redrive finds it its own.
        self.send_one(msg).await?;
        Ok(AlertResult {
            source_alert_id: msg.alert.source_alert_id.clone(),
            incident_id: Some(msg.incident_id.clone()),
            outcome: Outcome::Created,
        })
    }

    async fn send_one(&self, msg: &QueuedAlert) -> Result<(), StoreError> {
        if self.send_all(&[msg]).await.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "send to the alert queue failed".into(),
            ))
        }
    }
}

/// Of two errors, the one to answer with: an in-flight lease says exactly when to retry.
fn worse(a: Option<StoreError>, b: StoreError) -> StoreError {
    match (a, b) {
        (
            Some(StoreError::InFlight { retry_after: x }),
            StoreError::InFlight { retry_after: y },
        ) => StoreError::InFlight {
            retry_after: x.max(y),
        },
        (Some(e @ StoreError::InFlight { .. }), _) => e,
        (_, e) => e,
    }
}
