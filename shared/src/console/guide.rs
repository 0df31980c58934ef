//! Each provider's set-up as the Integrations page shows it: headers, steps and a ready curl for
//! this tenant's webhook URL. Written from each sender's real settings (docs/senders.md).

use super::views::HeaderLine;
use crate::model::Provider;

pub struct Guide {
    pub headers: Vec<HeaderLine>,
    pub steps: Vec<&'static str>,
    pub curl: String,
}

fn h(name: &'static str, value: &str) -> HeaderLine {
    HeaderLine {
        name,
        value: value.to_owned(),
    }
}

const KEY: &str = "your API key (Settings > API keys)";

/// The set-up of `p` for `url`.
pub fn guide(p: Provider, url: &str) -> Guide {
    let signed_curl = |body: &str| {
        format!(
            "body='{body}'\n\
             sig=$(printf '%s' \"$body\" | openssl dgst -sha256 -hmac \"$WEBHOOK_SECRET\" | sed 's/^.* //')\n\
             curl -sS -X POST '{url}' \\\n  -H 'Content-Type: application/json' \\\n  \
             -H \"X-API-Key: $API_KEY\" \\\n  -H \"X-Webhook-Signature: $sig\" \\\n  --data-raw \"$body\""
        )
    };
    match p {
        Provider::Datadog => Guide {
            headers: vec![h("X-API-Key", KEY)],
            steps: vec![
                "In Datadog, open Integrations > Webhooks and press New.",
                "Name it causeflow and paste the webhook URL above.",
                "Custom Headers: {\"X-API-Key\": \"<your API key>\"}. Datadog cannot sign bodies; the key is enough.",
                "Payload: use the custom payload of docs/senders.md (alert_id, alert_cycle_key, alert_transition, alert_priority, title, text, tags), so a recovery resolves the incident its trigger opened.",
                "Add @webhook-causeflow to the notification message of each monitor that should page.",
            ],
            curl: format!(
                "curl -sS -X POST '{url}' \\\n  -H 'Content-Type: application/json' \\\n  -H \"X-API-Key: $API_KEY\" \\\n  \
                 --data-raw '{{\"alert_id\":\"1234\",\"alert_transition\":\"Triggered\",\"alert_priority\":\"P2\",\"title\":\"[Triggered] High CPU on web-1\",\"text\":\"CPU above 90% for 5m\",\"tags\":\"service:web,env:prod\"}}'"
            ),
        },
        Provider::Grafana => Guide {
            headers: vec![
                h("X-API-Key", KEY),
                h("X-Webhook-Signature", "set by Grafana's HMAC Signature option, with your webhook secret"),
                h("X-Webhook-Timestamp", "set by Grafana when its Timestamp header option names it"),
            ],
            steps: vec![
                "In Grafana 12 or later, open Alerting > Contact points > Add contact point and pick Webhook.",
                "URL: the webhook URL above; method POST.",
                "Optional Webhook settings > HMAC Signature: Secret = your webhook secret, Header = X-Webhook-Signature, Timestamp header = X-Webhook-Timestamp.",
                "Optional Webhook settings > Extra Headers: X-API-Key = your API key.",
                "Press Test: the test notification appears on the Incidents page marked test.",
                "Grafana OnCall / IRM: an outgoing webhook with Forward whole payload, this URL and the X-API-Key header.",
            ],
            curl: signed_curl(
                r#"{"receiver":"causeflow","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"HighLatency","severity":"critical","service":"checkout"},"annotations":{"summary":"p99 above 2s"},"fingerprint":"c0ffee01","startsAt":"2026-01-01T00:00:00Z"}]}"#,
            ),
        },
        Provider::Cloudwatch => Guide {
            headers: vec![
                h("(none)", "SNS cannot add headers: use one of the three options below"),
            ],
            steps: vec![
                "Option (a), credentials in the URL: create an API key, then subscribe the topic with the HTTPS endpoint https://user:<API key>@<host>/v1/webhooks/<tenant>/cloudwatch (the user name is not checked). SNS sends the credentials after the first 401 challenge.",
                "Option (b), allow-listed topic: add the topic's ARN below, then subscribe the webhook URL above with no credentials. Only SNS-signed messages from that topic are accepted.",
                "Option (c), the sample forwarder Lambda (functions/sns-forwarder): subscribe it to the topic; it posts here with X-API-Key and X-Webhook-Signature.",
                "The SubscriptionConfirmation is confirmed automatically once its signature checks out; the subscription then shows confirmed below.",
                "Test: aws cloudwatch set-alarm-state --alarm-name <alarm> --state-value ALARM --state-reason test",
            ],
            curl: format!(
                "aws sns subscribe --topic-arn arn:aws:sns:<region>:<account>:<topic> \\\n  --protocol https --notification-endpoint '{url}'"
            ),
        },
        Provider::Sentry => Guide {
            headers: vec![
                h("X-API-Key", KEY),
                h("Sentry-Hook-Signature", "sent by Sentry; checked with the integration's Client Secret"),
            ],
            steps: vec![
                "In Sentry, open Settings > Developer Settings > Custom Integrations and create an internal integration.",
                "Webhook URL: the webhook URL above. Enable the issue resource and alert rule actions.",
                "Webhook Headers: X-API-Key = your API key.",
                "Copy the integration's Client Secret and save it on the key (API keys > Sentry client secret).",
                "Use the integration as the action of issue alerts and metric alerts.",
            ],
            curl: signed_curl(
                r#"{"id":"4321","project":"checkout","project_slug":"checkout","level":"error","culprit":"charge()","message":"ZeroDivisionError","url":"https://sentry.example/issues/4321/"}"#,
            ),
        },
        Provider::Generic => Guide {
            headers: vec![
                h("X-API-Key", KEY),
                h("X-Webhook-Signature", "hex HMAC-SHA256 of the raw body, keyed with your webhook secret"),
            ],
            steps: vec![
                "POST one alert per request as JSON: sourceAlertId and title are required; status firing or resolved; severity, message, service, environment, tags and links are optional.",
                "Sign the exact bytes you send: X-Webhook-Signature = hex HMAC-SHA256 of the body with your webhook secret (a sha256= prefix is accepted).",
                "Send the same sourceAlertId with status resolved to resolve the incident.",
            ],
            curl: signed_curl(
                r#"{"sourceAlertId":"checkout-latency","title":"Checkout p99 above 2s","status":"firing","severity":"high","service":"checkout","environment":"prod"}"#,
            ),
        },
        Provider::Alertmanager => Guide {
            headers: vec![h("Authorization", "Bearer <your API key> (http_config.authorization)")],
            steps: vec![
                "Add a receiver with webhook_configs: url = the webhook URL above.",
                "http_config.authorization: type Bearer, credentials_file pointing at a file holding your API key.",
                "Keep send_resolved: true (the default) so resolved alerts resolve their incidents.",
                "Route the alerts that should open incidents to this receiver; amtool check-config validates the file.",
            ],
            curl: format!(
                "curl -sS -X POST '{url}' \\\n  -H 'Content-Type: application/json' \\\n  -H \"Authorization: Bearer $API_KEY\" \\\n  \
                 --data-raw '{{\"version\":\"4\",\"status\":\"firing\",\"receiver\":\"causeflow\",\"groupKey\":\"{{}}:{{alertname=\\\"DiskFull\\\"}}\",\"truncatedAlerts\":0,\"alerts\":[{{\"status\":\"firing\",\"labels\":{{\"alertname\":\"DiskFull\",\"severity\":\"critical\",\"job\":\"node\"}},\"annotations\":{{}},\"fingerprint\":\"d15cf011\",\"startsAt\":\"2026-01-01T00:00:00Z\"}}]}}'"
            ),
        },
        Provider::Pagerduty => Guide {
            headers: vec![h("(body) routing_key", "your API key; or send it in X-API-Key or Authorization: Bearer")],
            steps: vec![
                "Point the sender's Events API v2 URL at the webhook URL above instead of events.pagerduty.com/v2/enqueue.",
                "Use your API key as the integration (routing) key.",
                "trigger opens an incident keyed by dedup_key; acknowledge and resolve change it.",
            ],
            curl: format!(
                "curl -sS -X POST '{url}' \\\n  -H 'Content-Type: application/json' \\\n  \
                 --data-raw \"{{\\\"routing_key\\\":\\\"$API_KEY\\\",\\\"event_action\\\":\\\"trigger\\\",\\\"dedup_key\\\":\\\"db-1-disk\\\",\\\"payload\\\":{{\\\"summary\\\":\\\"Disk 97% on db-1\\\",\\\"source\\\":\\\"db-1\\\",\\\"severity\\\":\\\"critical\\\"}}}}\""
            ),
        },
    }
}
