//! Incidents and agent tasks in SQLite. Tasks go to an outbox table: recording a task is the
//! embedded "publish", and a delivery loop forwards the outbox to `--agent-webhook` when set.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::{now_ms, Db};
use crate::error::StoreError;
use crate::model::{DispatchTask, Incident, IncidentStatus, TaskKind};
use crate::ports::{Dispatcher, IncidentPage, IncidentQuery, IncidentStore};

/// [`IncidentStore`] on the `incidents` table.
#[derive(Clone)]
pub struct SqliteIncidents {
    db: Db,
}

impl SqliteIncidents {
    pub fn new(db: Db) -> Self {
        SqliteIncidents { db }
    }
}

fn decode(json: String) -> Result<Incident, StoreError> {
    serde_json::from_str(&json)
        .map_err(|e| StoreError::Unavailable(format!("stored incident: {e}")))
}

fn get(c: &Connection, tenant: &str, id: &str) -> Result<Option<Incident>, StoreError> {
    let json: Option<String> = c
        .prepare_cached("SELECT data FROM incidents WHERE tenant_id = ?1 AND incident_id = ?2")?
        .query_row(params![tenant, id], |r| r.get(0))
        .optional()?;
    json.map(decode).transpose()
}

fn put(c: &Connection, i: &Incident) -> Result<(), StoreError> {
    let json = serde_json::to_string(i).map_err(|e| StoreError::Invalid(e.to_string()))?;
    c.prepare_cached(
        "INSERT OR REPLACE INTO incidents(tenant_id, incident_id, status, data) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![i.tenant_id, i.incident_id, i.status.as_str(), json])?;
    Ok(())
}

#[async_trait]
impl IncidentStore for SqliteIncidents {
    async fn open(&self, incident: Incident) -> Result<Incident, StoreError> {
        self.db
            .write(
                move |c| match get(c, &incident.tenant_id, &incident.incident_id)? {
                    Some(existing) => Ok(existing),
                    None => {
                        put(c, &incident)?;
                        Ok(incident)
                    }
                },
            )
            .await
    }

    async fn resolve(&self, incident: Incident) -> Result<Incident, StoreError> {
        self.db
            .write(
                move |c| match get(c, &incident.tenant_id, &incident.incident_id)? {
                    Some(mut existing) if existing.status.is_active() => {
                        existing.status = IncidentStatus::Resolved;
                        existing.resolved_at = incident.resolved_at.clone();
                        existing.last_seen = incident.last_seen.clone();
                        put(c, &existing)?;
                        Ok(existing)
                    }
                    Some(existing) => Ok(existing),
                    None => {
                        put(c, &incident)?;
                        Ok(incident)
                    }
                },
            )
            .await
    }

    async fn acknowledge(
        &self,
        tenant_id: &str,
        incident_id: &str,
        at: &str,
    ) -> Result<Option<Incident>, StoreError> {
        let (t, i, at) = (tenant_id.to_owned(), incident_id.to_owned(), at.to_owned());
        self.db
            .write(move |c| {
                let Some(mut existing) = get(c, &t, &i)? else {
                    return Ok(None);
                };
                if existing.acknowledge(&at) {
                    put(c, &existing)?;
                }
                Ok(Some(existing))
            })
            .await
    }

    async fn get(
        &self,
        tenant_id: &str,
        incident_id: &str,
    ) -> Result<Option<Incident>, StoreError> {
        let (t, i) = (tenant_id.to_owned(), incident_id.to_owned());
        self.db.read(move |c| get(c, &t, &i)).await
    }

    async fn list(&self, tenant_id: &str, q: &IncidentQuery) -> Result<IncidentPage, StoreError> {
        let t = tenant_id.to_owned();
        let status = q.status.map(|s| s.as_str());
        let cursor = q.cursor.clone();
        let limit = q.limit.clamp(1, 1000);
        self.db
            .read(move |c| {
                let mut st = c.prepare_cached(
                    "SELECT data FROM incidents WHERE tenant_id = ?1
                       AND (?2 IS NULL OR status = ?2)
                       AND (?3 IS NULL OR incident_id < ?3)
                     ORDER BY incident_id DESC LIMIT ?4",
                )?;
                let rows = st.query_map(params![t, status, cursor, (limit + 1) as i64], |r| {
                    r.get::<_, String>(0)
                })?;
                let incidents = rows
                    .map(|r| decode(r?))
                    .collect::<Result<Vec<_>, StoreError>>()?;
                Ok(IncidentPage::from_overfetch(incidents, limit))
            })
            .await
    }
}

/// [`Dispatcher`] that records tasks in the `dispatches` outbox.
#[derive(Clone)]
pub struct SqliteDispatcher {
    db: Db,
}

/// An outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchRow {
    pub task_id: String,
    pub agent: String,
    pub kind: String,
    pub severity: String,
    pub tenant_id: String,
    pub body: String,
    pub attempts: i64,
    pub delivered: bool,
}

impl SqliteDispatcher {
    pub fn new(db: Db) -> Self {
        SqliteDispatcher { db }
    }

    /// Tasks of one incident, oldest first.
    pub async fn for_incident(
        &self,
        tenant: &str,
        incident: &str,
    ) -> Result<Vec<DispatchRow>, StoreError> {
        let (t, i) = (tenant.to_owned(), incident.to_owned());
        self.db
            .read(move |c| {
                select_rows(
                    c,
                    "WHERE tenant_id = ?1 AND incident_id = ?2 ORDER BY created_at, rowid",
                    params![t, i],
                )
            })
            .await
    }

    /// Undelivered tasks that are due.
    pub async fn due(&self, limit: usize) -> Result<Vec<DispatchRow>, StoreError> {
        self.db
            .read(move |c| {
                select_rows(
                    c,
                    "WHERE delivered_at IS NULL AND next_attempt_at <= ?1 ORDER BY next_attempt_at LIMIT ?2",
                    params![now_ms(), limit as i64],
                )
            })
            .await
    }

    /// Records a delivery attempt: delivered, or retried after `retry_after_ms`.
    pub async fn record_attempt(
        &self,
        task_id: &str,
        delivered: bool,
        retry_after_ms: i64,
    ) -> Result<(), StoreError> {
        let t = task_id.to_owned();
        self.db
            .write(move |c| {
                let now = now_ms();
                c.execute(
                    "UPDATE dispatches SET attempts = attempts + 1,
                        delivered_at = CASE WHEN ?2 THEN ?3 ELSE NULL END,
                        next_attempt_at = ?3 + ?4
                     WHERE task_id = ?1",
                    params![t, delivered, now, retry_after_ms],
                )?;
                Ok(())
            })
            .await
    }
}

fn select_rows(
    c: &Connection,
    tail: &str,
    p: impl rusqlite::Params,
) -> Result<Vec<DispatchRow>, StoreError> {
    let sql = format!(
        "SELECT task_id, agent, kind, severity, tenant_id, body, attempts, delivered_at IS NOT NULL
         FROM dispatches {tail}"
    );
    let mut st = c.prepare_cached(&sql)?;
    let rows = st.query_map(p, |r| {
        Ok(DispatchRow {
            task_id: r.get(0)?,
            agent: r.get(1)?,
            kind: r.get(2)?,
            severity: r.get(3)?,
            tenant_id: r.get(4)?,
            body: r.get(5)?,
            attempts: r.get(6)?,
            delivered: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

#[async_trait]
impl Dispatcher for SqliteDispatcher {
    async fn dispatch(&self, task: &DispatchTask) -> Result<(), StoreError> {
        let body = serde_json::to_string(task).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let t = task.clone();
        self.db
            .write(move |c| {
                let now = now_ms();
                c.prepare_cached(
                    "INSERT OR IGNORE INTO dispatches(task_id, tenant_id, incident_id, agent, kind,
                        severity, body, created_at, next_attempt_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                )?
                .execute(params![
                    t.task_id,
                    t.tenant_id,
                    t.incident_id,
                    t.agent,
                    match t.kind {
                        TaskKind::Dispatch => "dispatch",
                        TaskKind::Cancel => "cancel",
                    },
                    t.severity.as_str(),
                    body,
                    now
                ])?;
                Ok(())
            })
            .await?;
        self.db.signals().dispatched.notify_one();
        Ok(())
    }
}
