//! Triage Lambda handler: an SQS batch in, a partial batch response out. Records are triaged
//! concurrently by the shared [`Triage`]; only the failed ones are named, so a poison message
//! never fails its batch-mates.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use causeflow_shared::triage::{QueueRecord, Triage};

/// Triages one SQS batch.
pub async fn handle(event: SqsEvent, triage: &Triage) -> SqsBatchResponse {
    let records = event
        .records
        .into_iter()
        .map(|r| QueueRecord {
            receive_count: r
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|n| n.parse().ok())
                .unwrap_or(1),
            id: r.message_id.unwrap_or_default(),
            body: r.body.unwrap_or_default(),
        })
        .collect();
    let failed = triage.handle_batch(records).await;
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failed
        .into_iter()
        .map(|id| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            f
        })
        .collect();
    response
}
