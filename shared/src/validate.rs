//! Checks of the values that management commands store: tenant ids, SNS topic ARNs, Sentry
//! client secrets. Both hosts' key stores call them, so both refuse the same input.

use crate::error::StoreError;

/// Longest Sentry client secret accepted (Sentry's are 64 hex characters).
pub const MAX_SENTRY_SECRET: usize = 512;

/// A Sentry client secret as stored: trimmed, never empty, and bounded.
pub fn clean_sentry_secret(secret: &str) -> Result<String, StoreError> {
    match secret.trim() {
        "" => Err(StoreError::Invalid(
            "the Sentry client secret is empty".into(),
        )),
        s if s.len() > MAX_SENTRY_SECRET => Err(StoreError::Invalid(format!(
            "the Sentry client secret is {} bytes long; Sentry's are 64 characters (at most {MAX_SENTRY_SECRET} accepted)",
            s.len()
        ))),
        s => Ok(s.to_owned()),
    }
}

/// Refuses what is not an SNS topic ARN, before it goes on an allow-list.
pub fn check_topic_arn(topic_arn: &str) -> Result<(), StoreError> {
    match crate::sns::topic_region(topic_arn) {
        Some(_) => Ok(()),
        None => Err(StoreError::Invalid(format!(
            "{topic_arn:?} is not an SNS topic ARN (arn:aws:sns:<region>:<account>:<name>)"
        ))),
    }
}

/// Tenant ids appear in URLs and table keys: lower-case letters, digits, `-` and `_`.
pub fn check_tenant_id(t: &str) -> Result<(), StoreError> {
    let ok = !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "tenant id {t:?}: use 1-64 lower-case letters, digits, '-' or '_'"
        )))
    }
}
