//! The alert queue's SQS dead-letter queue behind [`DeadLetters`].

use async_trait::async_trait;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use aws_sdk_sqs::Client as Sqs;

use super::item::unavailable;
use crate::deadletter::{DeadLetter, DeadLetters};
use crate::error::StoreError;

/// How long a taken dead letter stays hidden from other readers (and its receipt handle stays
/// good), per letter taken: generous for one requeue. Put-back makes the rest visible at once.
const HIDE_SECS_PER_LETTER: usize = 2;
/// SQS's longest visibility timeout.
const MAX_HIDE_SECS: usize = 12 * 3600;

/// [`DeadLetters`] on the dead-letter queue (the stack's `AlertDeadLetterQueueUrl`).
pub struct SqsDeadLetters {
    sqs: Sqs,
    url: String,
}

impl SqsDeadLetters {
    pub fn new(sqs: Sqs, url: &str) -> Self {
        SqsDeadLetters {
            sqs,
            url: url.to_owned(),
        }
    }
}

#[async_trait]
impl DeadLetters for SqsDeadLetters {
    async fn take(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let mut out = Vec::new();
        while out.len() < limit {
            let batch = (limit - out.len()).min(10) as i32;
            let msgs = self
                .sqs
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(batch)
                .visibility_timeout((60 + limit * HIDE_SECS_PER_LETTER).min(MAX_HIDE_SECS) as i32)
                .wait_time_seconds(1)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .send()
                .await
                .map_err(|e| unavailable("receive from the dead-letter queue", e))?
                .messages
                .unwrap_or_default();
            if msgs.is_empty() {
                break;
            }
            for m in msgs {
                let receive_count = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                out.push(DeadLetter {
                    id: m.message_id.unwrap_or_default(),
                    handle: m.receipt_handle.unwrap_or_default(),
                    body: m.body.unwrap_or_default(),
                    receive_count,
                    dead_at: None,
                });
            }
        }
        Ok(out)
    }

    async fn put_back(&self, letters: &[DeadLetter]) -> Result<(), StoreError> {
        for chunk in letters.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, l)| {
                    aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&l.handle)
                        .visibility_timeout(0)
                        .build()
                        .ok()
                })
                .collect();
            self.sqs
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| unavailable("put dead letters back", e))?;
        }
        Ok(())
    }

    async fn remove(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        self.sqs
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(&letter.handle)
            .send()
            .await
            .map_err(|e| unavailable("delete from the dead-letter queue", e))?;
        Ok(())
    }
}
