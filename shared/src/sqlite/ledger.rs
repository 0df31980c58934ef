//! The dedup lifecycle over SQLite. A request's alerts are decided and queued in one job of the
//! writer's transaction, so the dedup record and the queued alert are written together or not
//! at all; the single writer makes concurrent identical requests strictly sequential. While
//! `serve` runs, the alerts are handed to the triage pass that runs before the commit instead
//! of being queued ([`super::Db::triage_before_commit`]).

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::Db;
use crate::dedup::{decide, namespace, new_incident_id, Decision, DedupConfig, DedupRecord};
use crate::error::StoreError;
use crate::model::{Alert, AlertResult, AlertStatus, Outcome, Provider, QueuedAlert};
use crate::ports::{AlertLedger, KeyRelease};

/// [`AlertLedger`] backed by the `dedup` and `queue` tables.
#[derive(Clone)]
pub struct SqliteLedger {
    db: Db,
    config: DedupConfig,
}

impl SqliteLedger {
    pub fn new(db: Db, config: DedupConfig) -> Self {
        SqliteLedger { db, config }
    }
}

fn load(c: &Connection, t: &str, p: &str, id: &str) -> Result<Option<DedupRecord>, StoreError> {
    let mut st = c.prepare_cached(
        "SELECT incident_id, pending, lease_until, expires_at FROM dedup
         WHERE tenant_id = ?1 AND provider = ?2 AND source_alert_id = ?3",
    )?;
    Ok(st
        .query_row(params![t, p, id], |r| {
            Ok(DedupRecord {
                incident_id: r.get(0)?,
                pending: r.get(1)?,
                lease_until_ms: r.get(2)?,
                expires_at_ms: r.get(3)?,
            })
        })
        .optional()?)
}

/// Deletes the dedup record of one key.
fn release(c: &Connection, t: &str, p: &str, id: &str) -> Result<(), StoreError> {
    c.prepare_cached(
        "DELETE FROM dedup WHERE tenant_id = ?1 AND provider = ?2 AND source_alert_id = ?3",
    )?
    .execute(params![t, p, id])?;
    Ok(())
}

/// A 409 is counted in the commit that answers it: one small upsert, no extra fsync.
fn count_duplicate(
    c: &Connection,
    tenant: &str,
    incident_id: &str,
    now: i64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO duplicates(tenant_id, incident_id, count, last_seen) VALUES (?1, ?2, 1, ?3)
         ON CONFLICT(tenant_id, incident_id) DO UPDATE SET count = count + 1,
           last_seen = max(last_seen, excluded.last_seen)",
    )?
    .execute(params![tenant, incident_id, now])?;
    Ok(())
}

/// Puts one alert on the queue table for the triage loop.
pub(super) fn enqueue(c: &Connection, msg: &QueuedAlert, now: i64) -> Result<(), StoreError> {
    let body = msg.to_queue_body();
    c.prepare_cached("INSERT INTO queue(body, enqueued_at, visible_at) VALUES (?1, ?2, ?2)")?
        .execute(params![body, now])?;
    Ok(())
}

#[async_trait]
impl AlertLedger for SqliteLedger {
    async fn admit(
        &self,
        tenant_id: &str,
        provider: Provider,
        alerts: &[Alert],
        received_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<AlertResult>, StoreError> {
        let tenant = tenant_id.to_owned();
        let alerts = alerts.to_vec();
        let ttl_ms = self.config.ttl.as_millis() as i64;
        let request_id = crate::http::observe::current_request_id();
        // Without a savepoint of its own (`write_unguarded`): its only failures are the
        // in-flight answer, which this ledger never gives (its records are written queued),
        // and failed writes, after which the whole transaction is rolled back.
        let (results, queued) = self
            .db
            .write_unguarded(move |c| {
                let now = received_at.timestamp_millis();
                let received = received_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                let mut results = Vec::with_capacity(alerts.len());
                let mut queued = false;
                // What the request is answered for one alert, and its hand-over to triage.
                let admitted = |decision: &Decision,
                                alert: Alert,
                                results: &mut Vec<AlertResult>,
                                queued: &mut bool|
                 -> Result<(), StoreError> {
                    let (outcome, incident_id) = decision.outcome();
                    let incident_id = incident_id.map(str::to_owned);
                    if let (
                        Decision::Create { .. }
                        | Decision::Resolve { .. }
                        | Decision::Acknowledge { .. },
                        Some(id),
                    ) = (decision, &incident_id)
                    {
                        let msg = QueuedAlert {
                            tenant_id: tenant.clone(),
                            provider,
                            incident_id: id.clone(),
                            received_at: received.clone(),
                            alert: alert.clone(),
                            request_id: request_id.clone(),
                        };
                        if let Some(msg) = super::defer_triage(msg) {
                            enqueue(c, &msg, now)?;
                            *queued = true;
                        }
                    }
                    results.push(AlertResult {
                        source_alert_id: alert.source_alert_id,
                        incident_id,
                        outcome,
                    });
                    Ok(())
                };
                for alert in alerts {
                    // The `provider` column holds the key's namespace (provider, or unsigned).
                    let ns = namespace(provider, alert.unsigned);
                    let p = ns.as_str();
                    let key = (tenant.as_str(), p, alert.source_alert_id.as_str());
                    // Most firings are new: the insert finds that out without a lookup first.
                    if alert.status == AlertStatus::Firing {
                        let incident_id = new_incident_id();
                        if put_record(c, NEW_RECORD, key, &incident_id, now, ttl_ms)? {
                            let decision = Decision::Create { incident_id };
                            admitted(&decision, alert, &mut results, &mut queued)?;
                            continue;
                        }
                    }
                    let existing = load(c, &tenant, p, &alert.source_alert_id)?;
                    let decision = decide(existing.as_ref(), alert.status, now, new_incident_id);
                    match &decision {
                        Decision::Create { incident_id } => {
                            put_record(c, REPLACE_RECORD, key, incident_id, now, ttl_ms)?;
                        }
                        Decision::Resolve { .. } => {
                            release(c, &tenant, p, &alert.source_alert_id)?;
                        }
                        // Records are written queued in the same transaction as their queue
                        // row, so none is ever pending here; answer as the AWS ledger would.
                        Decision::InFlight { retry_after, .. } => {
                            return Err(StoreError::InFlight {
                                retry_after: *retry_after,
                            })
                        }
                        Decision::Duplicate { incident_id } => {
                            count_duplicate(c, &tenant, incident_id, now)?;
                        }
                        Decision::Ignore | Decision::Acknowledge { .. } => {
                            if alert.status == AlertStatus::Resolved && existing.is_some() {
                                // An expired or abandoned record: clear it so it stops lingering.
                                release(c, &tenant, p, &alert.source_alert_id)?;
                            }
                        }
                    }
                    admitted(&decision, alert, &mut results, &mut queued)?;
                }
                Ok((results, queued))
            })
            .await?;
        if queued {
            self.db.signals().queued.notify_one();
        }
        Ok(results)
    }

    async fn requeue(&self, msg: &QueuedAlert) -> Result<AlertResult, StoreError> {
        let msg = msg.clone();
        let ttl_ms = self.config.ttl.as_millis() as i64;
        let result = self
            .db
            .write(move |c| {
                let now = crate::now_ms();
                let ns = namespace(msg.provider, msg.alert.unsigned);
                let (t, id) = (&msg.tenant_id, &msg.alert.source_alert_id);
                let existing = load(c, t, &ns, id)?;
                let own = existing
                    .as_ref()
                    .is_some_and(|r| r.incident_id == msg.incident_id);
                let outcome = match msg.alert.status {
                    AlertStatus::Firing => match existing.filter(|r| r.is_live(now) && !own) {
                        Some(other) => {
                            return Ok(AlertResult {
                                source_alert_id: id.clone(),
                                incident_id: Some(other.incident_id),
                                outcome: Outcome::Duplicate,
                            })
                        }
                        None => {
                            let key = (t.as_str(), ns.as_str(), id.as_str());
                            put_record(c, REPLACE_RECORD, key, &msg.incident_id, now, ttl_ms)?;
                            Outcome::Created
                        }
                    },
                    AlertStatus::Resolved => {
                        if own {
                            release(c, t, &ns, id)?;
                        }
                        Outcome::Resolved
                    }
                    AlertStatus::Acknowledged => Outcome::Acknowledged,
                    _ => Outcome::Ignored,
                };
                if outcome != Outcome::Ignored {
                    enqueue(c, &msg, now)?;
                }
                Ok(AlertResult {
                    source_alert_id: id.clone(),
                    incident_id: Some(msg.incident_id.clone()),
                    outcome,
                })
            })
            .await?;
        self.db.signals().queued.notify_one();
        Ok(result)
    }
}

/// Writes a record over any record of its key ([`put_record`]).
const REPLACE_RECORD: &str = "INSERT OR REPLACE INTO dedup(tenant_id, provider, source_alert_id,
        incident_id, pending, lease_until, expires_at)
     VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6)";

/// Writes a record only where its key has none ([`put_record`]).
const NEW_RECORD: &str = "INSERT INTO dedup(tenant_id, provider, source_alert_id,
        incident_id, pending, lease_until, expires_at)
     VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6) ON CONFLICT DO NOTHING";

/// Writes the record a firing holds once queued, not pending and expiring after the TTL, for
/// key (tenant, namespace, source alert id), with [`REPLACE_RECORD`] or [`NEW_RECORD`]: whether
/// it wrote one.
fn put_record(
    c: &Connection,
    sql: &'static str,
    (t, p, id): (&str, &str, &str),
    incident_id: &str,
    now: i64,
    ttl_ms: i64,
) -> Result<bool, StoreError> {
    let n = c
        .prepare_cached(sql)?
        .execute(params![t, p, id, incident_id, now, now + ttl_ms])?;
    Ok(n == 1)
}

#[async_trait]
impl KeyRelease for SqliteLedger {
    async fn release(&self, msg: &QueuedAlert) -> Result<(), StoreError> {
        let (tenant, id, incident) = (
            msg.tenant_id.clone(),
            msg.alert.source_alert_id.clone(),
            msg.incident_id.clone(),
        );
        let ns = namespace(msg.provider, msg.alert.unsigned);
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "DELETE FROM dedup WHERE tenant_id = ?1 AND provider = ?2
                     AND source_alert_id = ?3 AND incident_id = ?4",
                )?
                .execute(params![tenant, ns, id, incident])?;
                Ok(())
            })
            .await
    }
}
