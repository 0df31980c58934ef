//! Triage: turns queued alerts into incidents and agent tasks (docs/contract.md#triage-and-agents).
//! Idempotent, so a redelivered message changes nothing twice: incidents are written conditionally
//! and each task has a stable id that the dispatcher publishes at most once.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::error::StoreError;
use crate::model::{
    AlertStatus, AlertSummary, DispatchTask, Incident, IncidentStatus, QueuedAlert, TaskKind,
};
use crate::ports::{Dispatcher, IncidentStore, KeyRelease, TenantSettings};

/// Why one queued message could not be triaged.
#[derive(Debug, thiserror::Error)]
pub enum TriageError {
    /// The message is not a queued alert: it will never succeed (it ends in the dead-letter queue).
    #[error("malformed queue message: {0}")]
    Malformed(String),
    /// A store failed: redelivery will retry.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An acknowledgement reached triage before the firing that opens its incident: redelivery
    /// will retry.
    #[error("the incident to acknowledge is not recorded yet")]
    NotYetOpen,
}

/// One message of a batch, as SQS or the embedded queue delivers it.
#[derive(Debug, Clone)]
pub struct QueueRecord {
    /// SQS message id or the embedded queue's row id; reported back on failure.
    pub id: String,
    pub body: String,
    /// How many times the message has been received, this time included (SQS's
    /// `ApproximateReceiveCount`).
    pub receive_count: u32,
}

/// Receives after which a message goes to the dead-letter queue (the queue's
/// `maxReceiveCount`, 5 in `template.yaml` and the embedded queue).
pub const MAX_RECEIVES: u32 = 5;

/// The triage step, wired to its ports.
#[derive(Clone)]
pub struct Triage {
    pub incidents: Arc<dyn IncidentStore>,
    pub settings: Arc<dyn TenantSettings>,
    pub dispatcher: Arc<dyn Dispatcher>,
    /// Releases the key of a firing alert that fails its last receive.
    pub keys: Arc<dyn KeyRelease>,
    /// The queue's `maxReceiveCount`.
    pub max_receives: u32,
}

thread_local! {
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (which polls triage) with the caller's promise that no other triage runs until it
/// returns and that every store call inside it sees the writes before it: the embedded host's
/// writer thread, which triages one alert after another on its own connection. Then a resolve
/// cannot slip in between a firing's dispatch and the check for one that [`Triage::process`]
/// otherwise makes after it, so that check (an incident read and decoded, about a fifth of
/// triage's cost in the load profile) is skipped. Scoped to this thread and this call.
pub fn serially<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SERIAL.with(|s| s.replace(true)));
    f()
}

impl Triage {
    /// Processes a batch concurrently and returns the ids of the records that failed, so only
    /// those are redelivered (SQS partial batch response). A poison record fails alone.
    pub async fn handle_batch(&self, records: Vec<QueueRecord>) -> Vec<String> {
        let mut set = tokio::task::JoinSet::new();
        let mut ids = std::collections::HashMap::new();
        for rec in records {
            let this = self.clone();
            let id = rec.id.clone();
            let handle = set.spawn(async move { this.handle_record(rec).await });
            ids.insert(handle.id(), id);
        }
        let mut failed = Vec::new();
        while let Some(joined) = set.join_next_with_id().await {
            let (task, result) = match joined {
                Ok((task, r)) => (task, r.map_err(|e| e.to_string())),
                // A panic fails only its own record.
                Err(e) => {
                    crate::telemetry::triage_failed();
                    (e.id(), Err(format!("triage panicked: {e}")))
                }
            };
            if let Err(e) = result {
                let id = ids.remove(&task).unwrap_or_default();
                warn!(message_id = %id, error = %e, "triage failed; the message will be redelivered");
                failed.push(id);
            }
        }
        failed
    }

    /// Triages one queue record: parses it, processes it, and on its last receive gives its key
    /// up if it failed. `Ok` means the record is done and may be deleted from the queue.
    pub async fn handle_record(&self, rec: QueueRecord) -> Result<(), TriageError> {
        let msg = Self::parse(&rec)?;
        let result = self.process(&msg).await;
        self.settle(&rec, &msg, result).await
    }

    /// The queued alert a record carries; a record that is not one is counted as failed.
    pub fn parse(rec: &QueueRecord) -> Result<QueuedAlert, TriageError> {
        serde_json::from_str::<QueuedAlert>(&rec.body).map_err(|e| {
            crate::telemetry::triage_failed();
            TriageError::Malformed(e.to_string())
        })
    }

    /// What follows [`Triage::process`]: on the record's last receive, an acknowledgement
    /// with no incident is dropped and a failed firing gives its key up; the outcome is
    /// counted. `Ok` means the record is done.
    pub async fn settle(
        &self,
        rec: &QueueRecord,
        msg: &QueuedAlert,
        result: Result<(), TriageError>,
    ) -> Result<(), TriageError> {
        let last = rec.receive_count >= self.max_receives;
        if last && matches!(result, Err(TriageError::NotYetOpen)) {
            // Its firing never became an incident (it was dead-lettered, or never queued):
            // there is nothing to acknowledge, and a redrive could not change that.
            warn!(tenant = %msg.tenant_id, incident = %msg.incident_id,
                  "an acknowledgement found no incident after its last receive; dropped");
            return Ok(());
        }
        if result.is_err() && last {
            self.give_up(msg).await;
        }
        match &result {
            Ok(()) => self.done(msg),
            Err(_) => crate::telemetry::triage_failed(),
        }
        result
    }

    /// Counts a triaged alert and its time since it was received.
    pub fn done(&self, msg: &QueuedAlert) {
        crate::telemetry::triaged(since(&msg.received_at));
    }

    /// A firing alert failed its last receive and goes to the dead-letter queue: release its
    /// key, or every new firing would get a 409 naming an incident that never opened until the
    /// key expired. `causeflow dead-letters redrive` replays it after a fix.
    async fn give_up(&self, msg: &QueuedAlert) {
        if msg.alert.status != AlertStatus::Firing {
            return;
        }
        // Once the incident is recorded (a dispatch failed after it), its key must keep naming
        // it, or its resolve could never reach it.
        if let Ok(Some(_)) = self.incidents.get(&msg.tenant_id, &msg.incident_id).await {
            warn!(tenant = %msg.tenant_id, incident = %msg.incident_id,
                  "alert dead-lettered after its incident was recorded; its key stays");
            return;
        }
        match self.keys.release(msg).await {
            Ok(()) => warn!(tenant = %msg.tenant_id, incident = %msg.incident_id,
                            "alert dead-lettered after its last receive; its dedup key is released"),
            Err(e) => warn!(tenant = %msg.tenant_id, incident = %msg.incident_id, error = %e,
                            "alert dead-lettered; releasing its dedup key failed (it expires with its TTL)"),
        }
    }

    /// Records the incident and dispatches (or cancels) its agents.
    ///
    /// Its lines name the tenant, incident and request themselves, without a span around it:
    /// on the embedded host this runs on the writer thread for every alert, and the span cost
    /// as much as the line.
    pub async fn process(&self, msg: &QueuedAlert) -> Result<(), TriageError> {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let a = &msg.alert;
        let mut incident = Incident {
            tenant_id: msg.tenant_id.clone(),
            incident_id: msg.incident_id.clone(),
            provider: msg.provider,
            source_alert_id: a.source_alert_id.clone(),
            title: a.title.clone(),
            title_truncated: a.title_truncated,
            message: a.message.clone(),
            severity: a.severity,
            status: IncidentStatus::Open,
            service: a.service.clone(),
            environment: a.environment.clone(),
            tags: a.tags.clone(),
            links: a.links.clone(),
            test: a.test,
            first_seen: msg.received_at.clone(),
            last_seen: msg.received_at.clone(),
            resolved_at: None,
            acknowledged_at: None,
            agents: Vec::new(),
            duplicate_count: None,
        };
        let (stored, kind) = match a.status {
            AlertStatus::Firing => {
                if !a.test {
                    let overrides = self.settings.agent_overrides(&msg.tenant_id).await?;
                    incident.agents = overrides.agents_for(msg.provider, a.severity);
                }
                let stored = self.incidents.open(incident).await?;
                if stored.status == IncidentStatus::Resolved {
                    // Resolved before this (redelivered or reordered) firing was triaged. A key
                    // still naming it would turn every new firing into a 409 for a closed
                    // incident: give it up (docs/protocol-model.md).
                    self.keys.release(msg).await?;
                    return Ok(());
                }
                (stored, TaskKind::Dispatch)
            }
            AlertStatus::Resolved => {
                incident.status = IncidentStatus::Resolved;
                incident.resolved_at = Some(msg.received_at.clone());
                let stored = self.incidents.resolve(incident).await?;
                // Admission released the key when it queued the resolve, unless it died in
                // between or a retried firing took the claim over meanwhile; a key left naming
                // a resolved incident is given up here (docs/protocol-model.md).
                self.keys.release(msg).await?;
                (stored, TaskKind::Cancel)
            }
            AlertStatus::Acknowledged => {
                return match self
                    .incidents
                    .acknowledge(&msg.tenant_id, &msg.incident_id, &msg.received_at)
                    .await?
                {
                    Some(i) => {
                        info!(tenant = %msg.tenant_id, incident = %msg.incident_id,
                              request_id = msg.request_id.as_deref(),
                              status = i.status.as_str(), "acknowledged");
                        Ok(())
                    }
                    // The firing that opens it is still queued (SQS does not keep order): the
                    // redelivery finds it.
                    None => Err(TriageError::NotYetOpen),
                };
            }
            AlertStatus::StateChange | AlertStatus::Ignored => {
                return Err(TriageError::Malformed(
                    "only firing, resolved and acknowledged alerts are queued".into(),
                ))
            }
        };
        let tasks: Vec<DispatchTask> = stored
            .agents
            .iter()
            .map(|agent| task(&stored, agent, kind, &now))
            .collect();
        self.dispatcher.dispatch_all(&tasks).await?;
        crate::telemetry::tasks(kind.as_str(), tasks.len());
        if kind == TaskKind::Dispatch && !SERIAL.with(|s| s.get()) {
            // A resolve triaged meanwhile may have sent its cancels before these dispatches:
            // cancel again after them (cancel ids are stable, so this never doubles one).
            let latest = self
                .incidents
                .get(&stored.tenant_id, &stored.incident_id)
                .await?;
            if let Some(resolved) = latest.filter(|i| i.status == IncidentStatus::Resolved) {
                let cancels: Vec<DispatchTask> = resolved
                    .agents
                    .iter()
                    .map(|agent| task(&resolved, agent, TaskKind::Cancel, &now))
                    .collect();
                self.dispatcher.dispatch_all(&cancels).await?;
                crate::telemetry::tasks(TaskKind::Cancel.as_str(), cancels.len());
            }
        }
        info!(tenant = %msg.tenant_id, incident = %msg.incident_id,
              request_id = msg.request_id.as_deref(), severity = %stored.severity,
              agents = stored.agents.len(), kind = kind.as_str(), "triaged");
        Ok(())
    }
}

/// Time since an RFC 3339 instant (a queued alert's `receivedAt`); `None` if it does not parse
/// or lies in the future.
fn since(rfc3339: &str) -> Option<std::time::Duration> {
    let at = chrono::DateTime::parse_from_rfc3339(rfc3339).ok()?;
    (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
        .to_std()
        .ok()
}

/// A task for one agent with its stable id.
pub fn task(incident: &Incident, agent: &str, kind: TaskKind, now: &str) -> DispatchTask {
    DispatchTask {
        task_id: task_id(&incident.incident_id, agent, kind),
        kind,
        incident_id: incident.incident_id.clone(),
        tenant_id: incident.tenant_id.clone(),
        agent: agent.to_owned(),
        severity: incident.severity,
        summary: AlertSummary {
            provider: incident.provider,
            source_alert_id: incident.source_alert_id.clone(),
            title: incident.title.clone(),
            service: incident.service.clone(),
            environment: incident.environment.clone(),
            links: incident.links.clone(),
        },
        dispatched_at: now.to_owned(),
    }
}

/// `taskId`: a stable hash of the incident id and the agent (docs/contract.md#triage-and-agents),
/// distinct for cancels.
pub fn task_id(incident_id: &str, agent: &str, kind: TaskKind) -> String {
    let mut h = Sha256::new();
    h.update(incident_id.as_bytes());
    h.update(b"\n");
    h.update(agent.as_bytes());
    if kind == TaskKind::Cancel {
        h.update(b"\ncancel");
    }
    // The first 16 bytes: 32 hex digits.
    let mut id = crate::auth::to_hex(&h.finalize()[..16]);
    id.insert_str(0, "task_");
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_stable_and_distinct() {
        assert_eq!(
            task_id("i", "logs", TaskKind::Dispatch),
            task_id("i", "logs", TaskKind::Dispatch)
        );
        assert_ne!(
            task_id("i", "logs", TaskKind::Dispatch),
            task_id("i", "metrics", TaskKind::Dispatch)
        );
        assert_ne!(
            task_id("i", "logs", TaskKind::Dispatch),
            task_id("i", "logs", TaskKind::Cancel)
        );
    }
}
