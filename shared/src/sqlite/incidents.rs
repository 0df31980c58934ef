//! Incidents and agent tasks in SQLite. Tasks go to an outbox table: recording a task is the
//! embedded "publish", and a delivery loop forwards the outbox to `--agent-webhook` when set.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::{now_ms, Db};
use crate::error::StoreError;
use crate::model::{DispatchTask, Incident, IncidentStatus};
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

/// One incident by its key: two primary-key lookups. (As one LEFT JOIN with bound keys, SQLite
/// re-prepared the statement at every execution, the largest single cost of triage in the load
/// profile.)
fn get(c: &Connection, tenant: &str, id: &str) -> Result<Option<Incident>, StoreError> {
    let Some(json) = c
        .prepare_cached("SELECT data FROM incidents WHERE tenant_id = ?1 AND incident_id = ?2")?
        .query_row(params![tenant, id], |r| r.get::<_, String>(0))
        .optional()?
    else {
        return Ok(None);
    };
    let dups: Option<(i64, i64)> = c
        .prepare_cached(
            "SELECT count, last_seen FROM duplicates WHERE tenant_id = ?1 AND incident_id = ?2",
        )?
        .query_row(params![tenant, id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    with_duplicates((json, dups.map(|d| d.0), dups.map(|d| d.1), id.to_owned())).map(Some)
}

/// An incident with its duplicate count, which the ledger keeps in `duplicates` (a 409 writes
/// one small row there in the commit it already makes, instead of rewriting the incident).
const SELECT: &str = "SELECT i.data, d.count, d.last_seen, i.incident_id FROM incidents i
    LEFT JOIN duplicates d ON d.tenant_id = i.tenant_id AND d.incident_id = i.incident_id";

type Row = (String, Option<i64>, Option<i64>, String);

/// The list query: both forms walk an index newest first, (tenant_id, status, incident_id) or
/// the primary key, and stop at the limit, so a page costs the same with 10 or 10 million
/// incidents in the tenant.
fn list_sql(by_status: bool) -> String {
    if by_status {
        format!(
            "{SELECT} WHERE i.tenant_id = ?1 AND i.status = ?2
               AND (?3 IS NULL OR i.incident_id < ?3)
             ORDER BY i.incident_id DESC LIMIT ?4"
        )
    } else {
        format!(
            "{SELECT} WHERE i.tenant_id = ?1 AND (?2 IS NULL)
               AND (?3 IS NULL OR i.incident_id < ?3)
             ORDER BY i.incident_id DESC LIMIT ?4"
        )
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn with_duplicates((json, count, last, _): Row) -> Result<Incident, StoreError> {
    let mut i = decode(json)?;
    i.with_duplicates(count.unwrap_or(0).max(0) as u64, last);
    Ok(i)
}

fn put(c: &Connection, i: &Incident) -> Result<(), StoreError> {
    let json = serde_json::to_string(i).map_err(|e| StoreError::Invalid(e.to_string()))?;
    c.prepare_cached(
        "INSERT OR REPLACE INTO incidents(tenant_id, incident_id, status, data) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![i.tenant_id, i.incident_id, i.status.as_str(), json])?;
    Ok(())
}

/// Writes `i` unless an incident with its key exists: whether it did.
fn insert_new(c: &Connection, i: &Incident) -> Result<bool, StoreError> {
    let json = serde_json::to_string(i).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let n = c
        .prepare_cached(
            "INSERT INTO incidents(tenant_id, incident_id, status, data) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![i.tenant_id, i.incident_id, i.status.as_str(), json])?;
    Ok(n == 1)
}

#[async_trait]
impl IncidentStore for SqliteIncidents {
    async fn open(&self, incident: Incident) -> Result<Incident, StoreError> {
        self.db
            .write(move |c| {
                // Nearly every open is of a new incident: the insert finds that out without a
                // lookup first.
                if insert_new(c, &incident)? {
                    return Ok(incident);
                }
                get(c, &incident.tenant_id, &incident.incident_id)?
                    .ok_or_else(|| StoreError::Unavailable("incident vanished mid-write".into()))
            })
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
        self.db.read_now(|c| get(c, tenant_id, incident_id))
    }

    async fn list(&self, tenant_id: &str, q: &IncidentQuery) -> Result<IncidentPage, StoreError> {
        let t = tenant_id.to_owned();
        let q = q.clone();
        let limit = q.limit.clamp(1, 1000);
        self.db
            .read(move |c| {
                let status = q.status.map(|s| s.as_str());
                let sql = list_sql(status.is_some());
                let mut st = c.prepare_cached(&sql)?;
                if !q.filters() {
                    let rows =
                        st.query_map(params![t, status, q.cursor, (limit + 1) as i64], row)?;
                    let incidents = rows
                        .map(|r| with_duplicates(r?))
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    return Ok(IncidentPage::from_overfetch(incidents, limit));
                }
                let cap = crate::ports::MAX_EXAMINED;
                let mut rows = st.query(params![t, status, q.cursor, (cap + 1) as i64])?;
                let (mut matches, mut examined, mut last) = (Vec::new(), 0, None);
                while let Some(r) = rows.next()? {
                    if examined == cap {
                        return Ok(IncidentPage::filtered(matches, limit, last, true));
                    }
                    examined += 1;
                    let r = row(r)?;
                    last = Some(r.3.clone());
                    let i = with_duplicates(r)?;
                    if q.matches(&i) {
                        matches.push(i);
                        if matches.len() > limit {
                            break;
                        }
                    }
                }
                Ok(IncidentPage::filtered(matches, limit, last, false))
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
    pub incident_id: String,
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
                    "WHERE tenant_id = ?1 AND incident_id = ?2
                     ORDER BY created_at, kind = 'cancel', position",
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
                    // Ties in the order recorded: a dispatch and its cancel often share their times.
                    "WHERE delivered_at IS NULL AND next_attempt_at <= ?1
                     ORDER BY next_attempt_at, created_at, kind = 'cancel', position LIMIT ?2",
                    params![now_ms(), limit as i64],
                )
            })
            .await
    }

    /// Records a delivery attempt on a task of [`SqliteDispatcher::due`]: delivered, or retried
    /// after `retry_after_ms`.
    pub async fn record_attempt(
        &self,
        row: &DispatchRow,
        delivered: bool,
        retry_after_ms: i64,
    ) -> Result<(), StoreError> {
        let key = (
            row.tenant_id.clone(),
            row.incident_id.clone(),
            row.task_id.clone(),
        );
        self.db
            .write(move |c| {
                let now = now_ms();
                c.prepare_cached(
                    "UPDATE dispatches SET attempts = attempts + 1,
                        delivered_at = CASE WHEN ?4 THEN ?5 ELSE NULL END,
                        next_attempt_at = ?5 + ?6
                     WHERE tenant_id = ?1 AND incident_id = ?2 AND task_id = ?3",
                )?
                .execute(params![
                    key.0,
                    key.1,
                    key.2,
                    delivered,
                    now,
                    retry_after_ms
                ])?;
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
        "SELECT task_id, agent, kind, severity, tenant_id, body, attempts, delivered_at IS NOT NULL,
            incident_id
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
            incident_id: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

#[async_trait]
impl Dispatcher for SqliteDispatcher {
    async fn dispatch(&self, task: &DispatchTask) -> Result<(), StoreError> {
        self.dispatch_all(std::slice::from_ref(task)).await
    }

    async fn dispatch_all(&self, tasks: &[DispatchTask]) -> Result<(), StoreError> {
        if tasks.is_empty() {
            return Ok(());
        }
        // The columns, not whole tasks: the write must own what it binds, and a task's summary
        // (title, links) is already in its body.
        let rows = tasks
            .iter()
            .map(|t| {
                Ok(TaskRow {
                    body: serde_json::to_string(t)?,
                    task_id: t.task_id.clone(),
                    tenant_id: t.tenant_id.clone(),
                    incident_id: t.incident_id.clone(),
                    agent: t.agent.clone(),
                    kind: t.kind.as_str(),
                    severity: t.severity.as_str(),
                })
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.db
            .write(move |c| {
                let now = now_ms();
                let mut st = c.prepare_cached(
                    "INSERT OR IGNORE INTO dispatches(task_id, tenant_id, incident_id, agent, kind,
                        severity, body, created_at, next_attempt_at, position)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9)",
                )?;
                for (position, t) in rows.into_iter().enumerate() {
                    st.execute(params![
                        t.task_id,
                        t.tenant_id,
                        t.incident_id,
                        t.agent,
                        t.kind,
                        t.severity,
                        t.body,
                        now,
                        position as i64
                    ])?;
                }
                Ok(())
            })
            .await?;
        // On the writer, the tasks are not committed yet: the writer wakes the delivery loop
        // once they are (`Wake::dispatched`).
        if !super::on_writer() {
            self.db.signals().dispatched.notify_one();
        }
        Ok(())
    }
}

/// One `dispatches` row to insert.
struct TaskRow {
    task_id: String,
    tenant_id: String,
    incident_id: String,
    agent: String,
    kind: &'static str,
    severity: &'static str,
    body: String,
}

#[async_trait]
impl crate::ports::TaskLog for SqliteDispatcher {
    async fn tasks(
        &self,
        tenant_id: &str,
        incident_id: &str,
    ) -> Result<Vec<crate::ports::TaskRecord>, StoreError> {
        let (t, i) = (tenant_id.to_owned(), incident_id.to_owned());
        self.db
            .read(move |c| {
                let mut st = c.prepare_cached(
                    "SELECT task_id, agent, kind, attempts, delivered_at, created_at FROM dispatches
                     WHERE tenant_id = ?1 AND incident_id = ?2
                     ORDER BY created_at, kind = 'cancel', position",
                )?;
                let rows = st.query_map(params![t, i], |r| {
                    let delivered: Option<i64> = r.get(4)?;
                    let created: i64 = r.get(5)?;
                    let at = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(
                        delivered.unwrap_or(created),
                    )
                    .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
                    Ok(crate::ports::TaskRecord {
                        task_id: r.get(0)?,
                        agent: r.get(1)?,
                        kind: match r.get::<_, String>(2)?.as_str() {
                            "cancel" => "cancel".into(),
                            _ => "investigate".into(),
                        },
                        state: match (delivered.is_some(), r.get::<_, i64>(3)?) {
                            (true, _) => "delivered",
                            // Recorded in the outbox; delivered when --agent-webhook is set.
                            (false, 0) => "queued",
                            (false, _) => "retrying",
                        }
                        .into(),
                        attempts: Some(r.get::<_, i64>(3)?.clamp(0, u32::MAX as i64) as u32),
                        at,
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn incident_pages_walk_an_index_and_never_sort() {
        let db = Db::open(super::super::tests::tempdir().join("plan.db")).unwrap();
        for by_status in [false, true] {
            let plan: Vec<String> = db
                .read(move |c| {
                    let mut st =
                        c.prepare(&format!("EXPLAIN QUERY PLAN {}", list_sql(by_status)))?;
                    let rows =
                        st.query_map(params!["t", "open", "inc_x", 51], |r| r.get::<_, String>(3))?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?)
                })
                .await
                .unwrap();
            assert!(plan.iter().all(|l| l.starts_with("SEARCH")), "{plan:?}");
            assert!(!plan.iter().any(|l| l.contains("TEMP B-TREE")), "{plan:?}");
        }
        db.close();
    }

    /// A database from before tasks were keyed by incident opens with its tasks intact, in
    /// their order, still delivered and still recorded at most once.
    #[tokio::test]
    async fn tasks_of_an_earlier_layout_are_migrated_in_order() {
        use crate::model::TaskKind;
        use crate::ports::TaskLog;
        let dir = super::super::tests::tempdir();
        let path = dir.join("old.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE dispatches (
                    task_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, incident_id TEXT NOT NULL,
                    agent TEXT NOT NULL, kind TEXT NOT NULL, severity TEXT NOT NULL,
                    body TEXT NOT NULL, created_at INTEGER NOT NULL, delivered_at INTEGER,
                    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER NOT NULL);
                 CREATE INDEX dispatches_undelivered ON dispatches(next_attempt_at)
                    WHERE delivered_at IS NULL;
                 CREATE INDEX dispatches_by_incident ON dispatches(tenant_id, incident_id);
                 -- Hash-like ids against their order, one timestamp: only the rowid said it.
                 INSERT INTO dispatches VALUES
                    ('task_f', 't', 'inc_1', 'metrics', 'dispatch', 'high', '{}', 5, 6, 1, 6),
                    ('task_z', 't', 'inc_1', 'logs', 'dispatch', 'high', '{}', 5, NULL, 0, 5),
                    ('task_y', 't', 'inc_1', 'deploys', 'dispatch', 'high', '{}', 5, NULL, 0, 5),
                    ('task_0', 't', 'inc_1', 'logs', 'cancel', 'high', '{}', 5, NULL, 0, 5),
                    ('task_b', 't', 'inc_2', 'logs', 'dispatch', 'low', '{}', 7, NULL, 0, 7);",
            )
            .unwrap();
        }
        for _ in 0..2 {
            let db = Db::open(&path).unwrap();
            let tasks = SqliteDispatcher::new(db.clone());
            let listed = tasks.tasks("t", "inc_1").await.unwrap();
            let order: Vec<_> = listed.iter().map(|t| t.task_id.as_str()).collect();
            assert_eq!(order, ["task_f", "task_z", "task_y", "task_0"]);
            assert_eq!(listed[0].state, "delivered");
            assert_eq!(listed[3].kind, "cancel");
            let left: i64 = db
                .read(|c| {
                    Ok(c.query_row(
                        "SELECT count(*) FROM sqlite_master WHERE name IN
                           ('dispatches_before_position', 'dispatches_by_incident')",
                        [],
                        |r| r.get(0),
                    )?)
                })
                .await
                .unwrap();
            assert_eq!(left, 0);
            db.close();
        }
        let db = Db::open(&path).unwrap();
        let tasks = SqliteDispatcher::new(db.clone());
        let due = tasks.due(10).await.unwrap();
        let due_ids: Vec<_> = due.iter().map(|r| r.task_id.as_str()).collect();
        // Due in the order recorded, a dispatch before its cancel, whatever their ids.
        assert_eq!(due_ids, ["task_z", "task_y", "task_0", "task_b"]);
        tasks.record_attempt(&due[0], true, 0).await.unwrap();
        let still_due: Vec<_> = tasks
            .due(10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.task_id)
            .collect();
        assert_eq!(still_due, ["task_y", "task_0", "task_b"]);
        // Recording a migrated task again changes nothing (its key is the same).
        let again = DispatchTask {
            task_id: "task_b".into(),
            kind: TaskKind::Dispatch,
            incident_id: "inc_2".into(),
            tenant_id: "t".into(),
            agent: "logs".into(),
            severity: crate::model::Severity::Low,
            summary: crate::model::AlertSummary {
                provider: crate::model::Provider::Generic,
                source_alert_id: "a".into(),
                title: "a".into(),
                service: None,
                environment: None,
                links: Vec::new(),
            },
            dispatched_at: "2026-11-28T00:00:00Z".into(),
        };
        tasks.dispatch_all(&[again]).await.unwrap();
        assert_eq!(tasks.tasks("t", "inc_2").await.unwrap().len(), 1);
        db.close();
    }
}
