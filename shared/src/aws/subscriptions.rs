//! SNS subscriptions on AWS: their state per tenant in DynamoDB, and confirmation with the SNS
//! `ConfirmSubscription` API in the topic's own region (with AuthenticateOnUnsubscribe, so only
//! the topic owner can unsubscribe the endpoint).

use async_trait::async_trait;
use aws_sdk_dynamodb::Client as Ddb;

use super::item::{get_s, s, unavailable};
use crate::error::StoreError;
use crate::ports::{Subscription, SubscriptionConfirmer, SubscriptionState, Subscriptions};

/// [`Subscriptions`] on the subscriptions table (tenantId, topicArn).
#[derive(Clone)]
pub struct DynamoSubscriptions {
    ddb: Ddb,
    table: String,
}

impl DynamoSubscriptions {
    pub fn new(ddb: Ddb, table: &str) -> Self {
        DynamoSubscriptions {
            ddb,
            table: table.to_owned(),
        }
    }
}

#[async_trait]
impl Subscriptions for DynamoSubscriptions {
    async fn record(&self, sub: &Subscription) -> Result<(), StoreError> {
        let mut req = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .key("tenantId", s(&sub.tenant_id))
            .key("topicArn", s(&sub.topic_arn))
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":st", s(sub.state.as_str()))
            .expression_attribute_values(":at", s(&sub.updated_at));
        req = match &sub.subscription_arn {
            Some(arn) => req
                .update_expression("SET #st = :st, updatedAt = :at, subscriptionArn = :arn")
                .expression_attribute_values(":arn", s(arn)),
            None => req.update_expression("SET #st = :st, updatedAt = :at"),
        };
        req.send()
            .await
            .map_err(|e| unavailable("record subscription", e))?;
        Ok(())
    }

    async fn list(&self, tenant_id: &str) -> Result<Vec<Subscription>, StoreError> {
        let items = self
            .ddb
            .query()
            .table_name(&self.table)
            .key_condition_expression("tenantId = :t")
            .expression_attribute_values(":t", s(tenant_id))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| unavailable("list subscriptions", e))?;
        Ok(items
            .iter()
            .map(|i| Subscription {
                tenant_id: tenant_id.to_owned(),
                topic_arn: get_s(i, "topicArn").unwrap_or_default(),
                state: get_s(i, "state")
                    .and_then(|st| SubscriptionState::parse(&st))
                    .unwrap_or(SubscriptionState::Pending),
                subscription_arn: get_s(i, "subscriptionArn"),
                updated_at: get_s(i, "updatedAt").unwrap_or_default(),
            })
            .collect())
    }
}

/// Confirms with `sns:ConfirmSubscription` in the topic's region.
#[derive(Clone)]
pub struct SnsApiConfirmer {
    sdk: aws_config::SdkConfig,
}

impl SnsApiConfirmer {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        SnsApiConfirmer { sdk: sdk.clone() }
    }
}

#[async_trait]
impl SubscriptionConfirmer for SnsApiConfirmer {
    async fn confirm(
        &self,
        topic_arn: &str,
        token: &str,
        _subscribe_url: &reqwest::Url,
    ) -> Result<Option<String>, String> {
        let region = crate::sns::topic_region(topic_arn)
            .ok_or_else(|| format!("{topic_arn:?} is not an SNS topic ARN"))?;
        let config = aws_sdk_sns::config::Builder::from(&self.sdk)
            .region(aws_sdk_sns::config::Region::new(region.to_owned()))
            .build();
        let out = aws_sdk_sns::Client::from_conf(config)
            .confirm_subscription()
            .topic_arn(topic_arn)
            .token(token)
            .authenticate_on_unsubscribe("true")
            .send()
            .await
            .map_err(|e| aws_sdk_sns::error::DisplayErrorContext(e).to_string())?;
        Ok(out.subscription_arn)
    }
}
