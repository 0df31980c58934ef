//! The embedded alert queue, with SQS's redelivery semantics: a message whose triage fails comes
//! back later (with backoff) with its receive counted, and one received `MAX_RECEIVES` times
//! moves to `dead_letters` instead of being delivered again. Triage claims a batch (counting the
//! receive) in one commit, then settles the whole batch in the next
//! ([`SqliteQueue::triage_batch`]).
//!
//! While `serve` runs, most alerts never reach the table: they are triaged in the transaction
//! that admits them ([`SqliteQueue::triage_at_admission`]), and only those that pass could not
//! triage are queued.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{now_ms, Db};
use crate::deadletter::{DeadLetter, DeadLetters};
use crate::error::StoreError;
use crate::model::QueuedAlert;
use crate::triage::{QueueRecord, TriageError};

/// Receives after which a message is dead-lettered (SQS `maxReceiveCount`).
pub const MAX_RECEIVES: i64 = crate::triage::MAX_RECEIVES as i64;

/// The queue tables.
#[derive(Clone)]
pub struct SqliteQueue {
    db: Db,
}

/// Queue depth for health and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    pub queued: i64,
    pub dead_letters: i64,
    /// Milliseconds since the oldest queued alert was enqueued; 0 when none is.
    #[serde(skip)]
    pub oldest_age_ms: i64,
}

impl SqliteQueue {
    pub fn new(db: Db) -> Self {
        SqliteQueue { db }
    }

    /// Makes messages claimed by a previous process visible again. Only one `serve` may use a
    /// database file, so anything claimed at start belongs to a process that died; its receive
    /// was already counted.
    pub async fn release_in_flight(&self) -> Result<usize, StoreError> {
        self.db
            .write(|c| {
                Ok(c.execute(
                    "UPDATE queue SET visible_at = ?1 WHERE visible_at > ?1 AND receive_count > 0",
                    [now_ms()],
                )?)
            })
            .await
    }

    /// Triages alerts in the transaction that admits them, before its commit, until
    /// [`SqliteQueue::queue_at_admission`]: so the 202 that answers them is sent after their
    /// incidents and tasks are on disk, and the queue is left for what this pass cannot do.
    ///
    /// - While anything is queued (a retry waiting, or what an earlier process left), admitted
    ///   alerts are queued behind it rather than triaged ahead of it, so the alerts of one
    ///   incident keep their order (the queue is usually empty: one cheap read per commit).
    /// - Otherwise the transaction's alerts are triaged together under one savepoint. If any
    ///   fails (or panics), that is rolled back and they are triaged again one by one, each in a
    ///   savepoint of its own; the first to fail is queued, and so is every alert after it, in
    ///   order. The triage loop then retries them, with backoff and dead-lettering as for any
    ///   queued alert. The alerts are answered 202 either way.
    ///
    /// What this gives up: a triage that kills the process (an abort, not a panic) does so
    /// before the commit, so its sender gets no answer rather than a 202, and retries.
    pub fn triage_at_admission(&self, triage: crate::triage::Triage) {
        self.db.triage_before_commit(Box::new(move |c, admitted| {
            let now = now_ms();
            let waiting = c
                .prepare_cached("SELECT EXISTS(SELECT 1 FROM queue)")?
                .query_row([], |r| r.get::<_, bool>(0))?;
            let triaged = if waiting {
                0
            } else {
                triage_admitted(c, &triage, &admitted)?
            };
            for msg in &admitted[triaged..] {
                super::ledger::enqueue(c, msg, now)?;
            }
            let queued = admitted.len() > triaged;
            let mut done = admitted;
            done.truncate(triaged);
            let triage = triage.clone();
            Ok(super::Wake {
                queued,
                dispatched: triaged > 0,
                // Counted once the commit stands: a failed commit answers 503.
                after: Some(Box::new(move || done.iter().for_each(|m| triage.done(m)))),
            })
        }));
    }

    /// Stops [`SqliteQueue::triage_at_admission`]: admitted alerts are queued again.
    pub fn queue_at_admission(&self) {
        self.db.remove_pre_commit();
    }

    /// Triages up to `max` visible messages in two writer jobs:
    ///
    /// 1. The claim: messages received `MAX_RECEIVES` times are dead-lettered, and the others
    ///    have this receive counted and are hidden for `lease_ms`. It commits before any triage
    ///    runs, so a crash that does not unwind (an abort, the OOM killer) still counts the
    ///    receive, and a message that kills the process is dead-lettered like any other.
    /// 2. The triage of every claimed message in one job, so their incidents, tasks and queue
    ///    deletions share one commit. Each message runs in a savepoint: one whose triage fails
    ///    (or panics) has its writes rolled back and comes back after `retry_base_ms`, doubling
    ///    with each receive. Triage's own code runs unchanged, its store calls made at once on
    ///    the writer's connection.
    ///
    /// Returns how many messages were taken.
    pub async fn triage_batch(
        &self,
        triage: crate::triage::Triage,
        max: usize,
        lease_ms: i64,
        retry_base_ms: i64,
    ) -> Result<usize, StoreError> {
        let due = self.db.read_now(|c| {
            Ok(
                c.prepare_cached("SELECT EXISTS(SELECT 1 FROM queue WHERE visible_at <= ?1)")?
                    .query_row([now_ms()], |r| r.get::<_, bool>(0))?,
            )
        })?;
        if !due {
            return Ok(0);
        }
        let (claimed, buried) = self
            .db
            .write(move |c| {
                let now = now_ms();
                let rows = c
                    .prepare_cached(
                        "SELECT id, body, receive_count FROM queue WHERE visible_at <= ?1
                         ORDER BY visible_at, id LIMIT ?2",
                    )?
                    .query_map(params![now, max as i64], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                let mut hide = c.prepare_cached(
                    "UPDATE queue SET receive_count = receive_count + 1, visible_at = ?2
                     WHERE id = ?1",
                )?;
                let (mut claimed, mut buried) = (Vec::with_capacity(rows.len()), 0);
                for (id, body, receive_count) in rows {
                    if receive_count >= MAX_RECEIVES {
                        bury(c, id, now)?;
                        buried += 1;
                        continue;
                    }
                    hide.execute(params![id, now + lease_ms])?;
                    claimed.push(QueueRecord {
                        id: id.to_string(),
                        body,
                        receive_count: (receive_count + 1) as u32,
                    });
                }
                Ok((claimed, buried))
            })
            .await?;
        crate::telemetry::dead_lettered(buried);
        let taken = claimed.len() + buried;
        if claimed.is_empty() {
            return Ok(taken);
        }
        self.db
            .write(move |c| {
                let now = now_ms();
                let retry = |record: &QueueRecord, e: &dyn std::fmt::Display| {
                    tracing::warn!(message_id = %record.id, error = %e,
                        "triage failed; the message will be redelivered");
                    retry_later(c, row_id(record), now, retry_base_ms)
                };
                // A record that is not a queued alert fails alone, before any triage runs.
                let mut parsed = Vec::with_capacity(claimed.len());
                for record in claimed {
                    match crate::triage::Triage::parse(&record) {
                        Ok(msg) => parsed.push((record, msg)),
                        Err(e) => retry(&record, &e)?,
                    }
                }
                if triage_together(c, &triage, &parsed)? {
                    return Ok(());
                }
                for (record, msg) in &parsed {
                    // A failing savepoint statement fails the whole job (`?`): the batch's
                    // messages then reappear when their claim lapses, receives counted.
                    match triage_one(c, &triage, record, msg)? {
                        Ok(()) => delete(c, row_id(record))?,
                        Err(e) => retry(record, &e)?,
                    }
                }
                Ok(())
            })
            .await?;
        // The tasks triage recorded on the writer are committed now: delivery may take them.
        self.db.signals().dispatched.notify_one();
        Ok(taken)
    }

    /// Dead letters, oldest first.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.db
            .read(move |c| {
                let mut st = c.prepare_cached(
                    "SELECT id, body, receive_count, dead_at FROM dead_letters ORDER BY id LIMIT ?1",
                )?;
                let rows = st.query_map([limit as i64], |r| {
                    let id = r.get::<_, i64>(0)?.to_string();
                    Ok(DeadLetter {
                        handle: id.clone(),
                        id,
                        body: r.get(1)?,
                        receive_count: r.get(2)?,
                        dead_at: chrono::DateTime::from_timestamp_millis(r.get(3)?)
                            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    pub async fn stats(&self) -> Result<QueueStats, StoreError> {
        self.db
            .read(|c| {
                Ok(QueueStats {
                    queued: c.query_row("SELECT count(*) FROM queue", [], |r| r.get(0))?,
                    dead_letters: c
                        .query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))?,
                    // The smallest id is the oldest enqueued: ids only grow (AUTOINCREMENT).
                    oldest_age_ms: c
                        .query_row(
                            "SELECT ?1 - enqueued_at FROM queue ORDER BY id LIMIT 1",
                            [now_ms()],
                            |r| r.get::<_, i64>(0),
                        )
                        .optional()?
                        .unwrap_or(0)
                        .max(0),
                })
            })
            .await
    }
}

/// The common case first: every record of the batch triaged under one savepoint, so a page
/// they share is copied to the savepoint journal once rather than once per record (per-record
/// savepoints were the largest part of triage's cost in the load profile). If all succeed, their
/// queue rows are deleted and `true` returned. If any fails, everything the pass wrote is rolled
/// back and `false` returned: the caller then triages each record under its own savepoint
/// ([`triage_one`]), so the failure stays alone. Triage is idempotent, so running a record twice
/// changes nothing twice; only the tasks metric counts the rolled-back pass too.
fn triage_together(
    c: &rusqlite::Connection,
    triage: &crate::triage::Triage,
    batch: &[(QueueRecord, QueuedAlert)],
) -> Result<bool, StoreError> {
    if process_in_savepoint(c, triage, batch.iter().map(|(_, msg)| msg))?.is_err() {
        return Ok(false);
    }
    for (record, msg) in batch {
        // `settle` of a success only counts it.
        let _ = drive(c, triage.settle(record, msg, Ok(())));
        delete(c, row_id(record))?;
    }
    Ok(true)
}

/// The pass of [`SqliteQueue::triage_at_admission`] over an empty queue: how many of the
/// admitted alerts, from the first, it triaged. The rest, from the first that failed, are for the
/// caller to queue.
fn triage_admitted(
    c: &rusqlite::Connection,
    triage: &crate::triage::Triage,
    admitted: &[QueuedAlert],
) -> Result<usize, StoreError> {
    if process_in_savepoint(c, triage, admitted.iter())?.is_ok() {
        return Ok(admitted.len());
    }
    // One by one, so the failure stays alone; triage is idempotent, so running an alert twice
    // changes nothing twice.
    for (n, msg) in admitted.iter().enumerate() {
        if let Err(e) = process_in_savepoint(c, triage, std::iter::once(msg))? {
            crate::telemetry::triage_failed();
            tracing::warn!(tenant = %msg.tenant_id, incident = %msg.incident_id,
                request_id = msg.request_id.as_deref(), error = %e, queued = admitted.len() - n,
                "triage at admission failed; the alert, and those admitted after it, are queued");
            return Ok(n);
        }
    }
    Ok(admitted.len())
}

/// Triages `alerts` in order under one savepoint, stopping at the first that fails (or
/// panics): then everything they wrote is rolled back and that failure returned. The outer
/// `Result` is the savepoint statements' own.
fn process_in_savepoint<'a>(
    c: &rusqlite::Connection,
    triage: &crate::triage::Triage,
    alerts: impl IntoIterator<Item = &'a QueuedAlert>,
) -> Result<Result<(), TriageError>, StoreError> {
    super::control(c, "SAVEPOINT triage")?;
    let processed = alerts
        .into_iter()
        .try_for_each(|msg| drive(c, triage.process(msg)));
    if processed.is_err() {
        super::control(c, "ROLLBACK TO triage")?;
    }
    super::control(c, "RELEASE triage")?;
    Ok(processed)
}

/// Triages one record on the writer's connection. Its processing runs in a savepoint, rolled
/// back if it fails or panics; what follows a failure (on the last receive, giving the key up)
/// runs after that rollback, so it stands.
fn triage_one(
    c: &rusqlite::Connection,
    triage: &crate::triage::Triage,
    record: &QueueRecord,
    msg: &QueuedAlert,
) -> Result<Result<(), TriageError>, StoreError> {
    let processed = process_in_savepoint(c, triage, std::iter::once(msg))?;
    Ok(drive(c, triage.settle(record, msg, processed)))
}

/// The queue row a record of this queue came from.
fn row_id(record: &QueueRecord) -> i64 {
    record.id.parse().unwrap_or(-1)
}

fn delete(c: &rusqlite::Connection, id: i64) -> Result<(), StoreError> {
    c.prepare_cached("DELETE FROM queue WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// Hides a message whose triage failed for `retry_base_ms`, doubling with each receive (at
/// most 10 minutes).
fn retry_later(
    c: &rusqlite::Connection,
    id: i64,
    now: i64,
    retry_base_ms: i64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE queue SET visible_at = ?2 + MIN(?3 * (1 << MIN(MAX(receive_count - 1, 0), 16)), 600000)
         WHERE id = ?1",
    )?
    .execute(params![id, now, retry_base_ms])?;
    Ok(())
}

/// Runs a triage future to completion on this thread, its store calls inline on `c`. Those
/// complete at once; a future that would wait on anything else fails instead of blocking the
/// writer, and a panic fails only this record.
fn drive(
    c: &rusqlite::Connection,
    f: impl std::future::Future<Output = Result<(), TriageError>>,
) -> Result<(), TriageError> {
    use futures_util::FutureExt;
    let mut f = std::pin::pin!(f);
    // On the writer, one triage at a time, each seeing the writes before it.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::triage::serially(|| super::inline(c, || f.as_mut().now_or_never()))
    }))
    .unwrap_or_else(|_| {
        Some(Err(TriageError::Store(StoreError::Unavailable(
            "triage panicked".into(),
        ))))
    })
    .unwrap_or_else(|| {
        Err(TriageError::Store(StoreError::Unavailable(
            "triage waited on something other than the database".into(),
        )))
    })
}

/// Moves one message to the dead letters.
fn bury(c: &rusqlite::Connection, id: i64, now: i64) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO dead_letters(id, body, receive_count, enqueued_at, dead_at)
         SELECT id, body, receive_count, enqueued_at, ?2 FROM queue WHERE id = ?1",
    )?
    .execute(params![id, now])?;
    delete(c, id)
}

#[async_trait::async_trait]
impl DeadLetters for SqliteQueue {
    async fn take(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.dead_letters(limit).await
    }

    /// Nothing to do: the table hides nothing.
    async fn put_back(&self, _: &[DeadLetter]) -> Result<(), StoreError> {
        Ok(())
    }

    async fn remove(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let id: i64 = letter
            .handle
            .parse()
            .map_err(|_| StoreError::Invalid(format!("dead letter id {:?}", letter.handle)))?;
        self.db
            .write(move |c| {
                c.execute("DELETE FROM dead_letters WHERE id = ?1", [id])?;
                Ok(())
            })
            .await
    }
}
