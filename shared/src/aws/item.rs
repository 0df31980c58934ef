//! Small helpers for reading and writing DynamoDB items and classifying SDK errors.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::error::StoreError;

pub type Item = HashMap<String, AttributeValue>;

pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub fn get_s(item: &Item, k: &str) -> Option<String> {
    item.get(k).and_then(|v| v.as_s().ok()).cloned()
}

pub fn get_n(item: &Item, k: &str) -> Option<i64> {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

pub fn get_bool(item: &Item, k: &str) -> bool {
    item.get(k)
        .and_then(|v| v.as_bool().ok())
        .copied()
        .unwrap_or(false)
}

/// Whether a call failed on its condition (someone else's write won), whatever the operation.
pub fn is_ccf<E>(e: &aws_sdk_dynamodb::error::SdkError<E>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error()
        .and_then(|se| se.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

/// Any SDK failure: the store is unavailable for this request (503, the sender retries).
pub fn unavailable<E: std::error::Error + 'static>(what: &str, e: E) -> StoreError {
    StoreError::Unavailable(format!(
        "{what}: {}",
        aws_sdk_dynamodb::error::DisplayErrorContext(e)
    ))
}

/// Reads the items of `pks` (key attribute `pk`) with `BatchGetItem`, 100 keys a call, asking
/// again with backoff for keys DynamoDB leaves unprocessed (throttling), a bounded number of
/// times: keys still unread then are an error, never silently missing.
pub async fn batch_get_by_pk(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    pks: &[String],
    projection: &str,
    names: &[(&str, &str)],
    what: &str,
) -> Result<Vec<Item>, StoreError> {
    let mut out = Vec::new();
    for chunk in pks.chunks(100) {
        let keys = chunk
            .iter()
            .map(|pk| HashMap::from([("pk".to_owned(), s(pk))]))
            .collect::<Vec<_>>();
        let mut builder = aws_sdk_dynamodb::types::KeysAndAttributes::builder()
            .set_keys(Some(keys))
            .projection_expression(projection);
        for (k, v) in names {
            builder = builder.expression_attribute_names(*k, *v);
        }
        let mut request = Some(
            builder
                .build()
                .map_err(|e| StoreError::Invalid(e.to_string()))?,
        );
        for attempt in 0..5u32 {
            let Some(req) = request.take() else { break };
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(25 << attempt)).await;
            }
            let got = ddb
                .batch_get_item()
                .request_items(table, req)
                .send()
                .await
                .map_err(|e| unavailable(what, e))?;
            out.extend(
                got.responses
                    .and_then(|mut r| r.remove(table))
                    .unwrap_or_default(),
            );
            request = got
                .unprocessed_keys
                .and_then(|mut u| u.remove(table))
                .filter(|k| !k.keys.is_empty());
        }
        if request.is_some() {
            return Err(StoreError::Unavailable(format!(
                "{what}: keys left unprocessed after 5 attempts"
            )));
        }
    }
    Ok(out)
}
