//! Dead letters: queued alerts that triage gave up on after the queue's last receive (their
//! keys are released then, unless their incident was already recorded; see [`crate::triage`]).
//! An operator lists them and, once the cause is fixed, redrives them: each is queued again under
//! its own incident id through [`AlertLedger::requeue`], which takes the key back for it, or
//! answers `duplicate` when another incident holds the key by now (docs/operations.md#dead-letters).

use async_trait::async_trait;
use serde::Serialize;

use crate::error::StoreError;
use crate::model::{AlertResult, QueuedAlert};
use crate::ports::AlertLedger;

/// One dead-lettered queue message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The embedded row id or the SQS message id.
    pub id: String,
    /// What removes it: the row id, or the SQS receipt handle of this listing.
    #[serde(skip)]
    pub handle: String,
    pub body: String,
    pub receive_count: u32,
    /// When it was dead-lettered, where the queue records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_at: Option<String>,
}

impl DeadLetter {
    /// The queued alert it holds, if it holds one.
    pub fn alert(&self) -> Option<QueuedAlert> {
        serde_json::from_str(&self.body).ok()
    }
}

/// Where dead letters sit: the embedded `dead_letters` table or the SQS dead-letter queue.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Up to `limit` dead letters, oldest first where the store can tell, held from other
    /// readers (an SQS receive hides them) until removed or put back.
    async fn take(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError>;
    /// Deletes a dead letter that was redriven.
    async fn remove(&self, letter: &DeadLetter) -> Result<(), StoreError>;
    /// Makes taken dead letters visible again at once.
    async fn put_back(&self, letters: &[DeadLetter]) -> Result<(), StoreError>;
}

/// Up to `limit` dead letters, left where they are.
pub async fn list(letters: &dyn DeadLetters, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
    let taken = letters.take(limit).await?;
    letters.put_back(&taken).await?;
    Ok(taken)
}

/// What became of one dead letter on redrive.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Redriven {
    pub id: String,
    /// What became of it: `created` (queued again), `duplicate` (another incident holds the key
    /// by now, so nothing was queued), `resolved` (the resolve was queued again), `acknowledged`
    /// (the acknowledgement was queued again) or `ignored`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<AlertResult>,
    /// Why it was left in place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Queues up to `limit` dead letters again (only those in `ids`, when given) and removes each one
/// that was requeued. A letter that is not a queued alert, or whose requeue fails, stays.
pub async fn redrive(
    letters: &dyn DeadLetters,
    ledger: &dyn AlertLedger,
    limit: usize,
    ids: &[String],
) -> Result<Vec<Redriven>, StoreError> {
    let mut out = Vec::new();
    let mut left = Vec::new();
    for letter in letters.take(limit).await? {
        if !ids.is_empty() && !ids.contains(&letter.id) {
            left.push(letter);
            continue;
        }
        let Some(msg) = letter.alert() else {
            out.push(Redriven {
                id: letter.id.clone(),
                result: None,
                error: Some("not a queued alert; left in place".into()),
            });
            left.push(letter);
            continue;
        };
        let entry = match ledger.requeue(&msg).await {
            Ok(result) => match letters.remove(&letter).await {
                Ok(()) => Redriven {
                    id: letter.id,
                    result: Some(result),
                    error: None,
                },
                Err(e) => Redriven {
                    id: letter.id,
                    result: Some(result),
                    error: Some(format!(
                        "requeued, but removing the dead letter failed: {e}"
                    )),
                },
            },
            Err(e) => {
                let entry = Redriven {
                    id: letter.id.clone(),
                    result: None,
                    error: Some(format!("not requeued ({e}); left in place")),
                };
                left.push(letter);
                entry
            }
        };
        out.push(entry);
    }
    // What was done stands even if putting the rest back fails: they reappear on their own.
    if let Err(e) = letters.put_back(&left).await {
        tracing::warn!(error = %e, "putting dead letters back failed; they reappear after their hold");
    }
    Ok(out)
}
