//! Confirming a subscription as `causeflow serve` does: an HTTPS GET of its already validated
//! SubscribeURL. (The AWS host calls `sns:ConfirmSubscription` instead; see `aws/`.)

use std::sync::Arc;

use async_trait::async_trait;

use super::HttpsGet;

/// Confirms a subscription by an HTTPS GET of its (already validated) SubscribeURL, as
/// `causeflow serve` does; SNS answers with a `ConfirmSubscriptionResponse` naming the
/// subscription.
pub struct SubscribeUrlConfirmer {
    get: Arc<dyn HttpsGet>,
}

impl SubscribeUrlConfirmer {
    pub fn new(get: Arc<dyn HttpsGet>) -> Self {
        SubscribeUrlConfirmer { get }
    }
}

#[async_trait]
impl crate::ports::SubscriptionConfirmer for SubscribeUrlConfirmer {
    async fn confirm(
        &self,
        _topic_arn: &str,
        _token: &str,
        subscribe_url: &reqwest::Url,
    ) -> Result<Option<String>, String> {
        let body = self.get.get(subscribe_url).await?;
        Ok(body
            .split_once("<SubscriptionArn>")
            .and_then(|(_, rest)| rest.split_once("</SubscriptionArn>"))
            .map(|(arn, _)| arn.trim().to_owned()))
    }
}
