//! The AWS host against real AWS APIs on loopback (moto server, started by `scripts/test`).
//! Tables, queues and the topic are created from `template.yaml`'s own definitions, so the
//! template and the code cannot drift; requests go through the ingest Lambda's router from the
//! `events/` fixtures, and batches through the triage Lambda's handler.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::QueueAttributeName;
use causeflow_shared::auth::{sign, DEV_API_KEY, DEV_WEBHOOK_SECRET};
use causeflow_shared::aws::{dedup_pk, ConsoleLambdaConfig, IngestConfig, TriageConfig};
use causeflow_shared::host::lambda::{ingest_state, triage};
use causeflow_shared::http::router;
use causeflow_shared::ports::KeyAdmin;
use serde_json::{json, Value};

mod common;

use common::aws::*;

#[test]
fn template_environment_matches_the_code() {
    let t = template();
    for (function, vars) in [
        ("IngestFunction", IngestConfig::VARIABLES.as_slice()),
        ("TriageFunction", TriageConfig::VARIABLES.as_slice()),
        ("ConsoleFunction", ConsoleLambdaConfig::VARIABLES.as_slice()),
    ] {
        let props = &t["Resources"][function]["Properties"];
        let env = props["Environment"]["Variables"].as_object().unwrap();
        for v in vars {
            assert!(env.contains_key(*v), "{function} lacks {v}");
        }
        // Set on the function or in Globals.Function.
        let setting = |k: &str| {
            let own = &props[k];
            if own.is_null() {
                t["Globals"]["Function"][k].clone()
            } else {
                own.clone()
            }
        };
        assert_eq!(setting("Architectures"), json!(["arm64"]), "{function}");
        assert_eq!(setting("Runtime"), "provided.al2023", "{function}");
        assert_eq!(
            t["Resources"][function]["Metadata"]["BuildMethod"],
            "rust-cargolambda"
        );
    }
    let triage_timeout = t["Resources"]["TriageFunction"]["Properties"]["Timeout"]
        .as_u64()
        .unwrap();
    let queue = &t["Resources"]["AlertQueue"]["Properties"];
    assert!(queue["VisibilityTimeout"].as_u64().unwrap() >= 6 * triage_timeout);
    assert_eq!(queue["RedrivePolicy"]["maxReceiveCount"], 5);
    // Triage releases a dead-lettered alert's key on the same receive SQS gives up on.
    assert_eq!(
        t["Resources"]["TriageFunction"]["Properties"]["Environment"]["Variables"]
            ["MAX_RECEIVE_COUNT"],
        queue["RedrivePolicy"]["maxReceiveCount"].to_string()
    );
    let sqs_event = &t["Resources"]["TriageFunction"]["Properties"]["Events"];
    assert!(sqs_event.to_string().contains("ReportBatchItemFailures"));
    // Reserved concurrency on both functions, and triage's event source capped at the same
    // number, so throttled receives never push messages into the dead-letter queue.
    for (function, parameter) in [
        ("IngestFunction", "IngestReservedConcurrency"),
        ("TriageFunction", "TriageReservedConcurrency"),
    ] {
        let reserved = &t["Resources"][function]["Properties"]["ReservedConcurrentExecutions"];
        assert_eq!(
            reserved["Fn::If"][1]["Ref"], parameter,
            "{function}: {reserved}"
        );
    }
    let scaling = &sqs_event["Alerts"]["Properties"]["ScalingConfig"]["Fn::If"][1];
    assert_eq!(
        scaling["MaximumConcurrency"]["Ref"], "TriageReservedConcurrency",
        "{sqs_event}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_pipeline_dispatches_by_severity_through_filtered_agent_queues() {
    let stack = Stack::create().await;
    let app = stack.ingest().await;
    let agents = stack.agent_queues().await;
    let triage = stack.triage();

    // Grafana, three alerts: severity critical, warning, and none (high).
    let (status, body) = event(&app, "webhook-grafana-firing.json").await;
    assert_eq!(status, 202, "{body}");
    let alerts = body["alerts"].as_array().unwrap().clone();
    assert!(alerts.iter().all(|a| a["outcome"] == "created"), "{body}");
    assert!(stack.run_triage(&triage).await.is_empty());

    let mut received: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (agent, url) in &agents {
        let tasks: Vec<Value> = stack
            .drain(url)
            .await
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect();
        for t in &tasks {
            assert_eq!(
                &t["agent"],
                agent.as_str(),
                "the filter policy routes by agent"
            );
            assert_eq!(t["tenantId"], "demo");
            assert_eq!(t["kind"], "dispatch");
            assert!(t["taskId"].as_str().unwrap().starts_with("task_"));
        }
        received.insert(agent.clone(), tasks);
    }
    let count = |a: &str| received[a].len();
    assert_eq!(
        (
            count("logs"),
            count("metrics"),
            count("deploys"),
            count("traces"),
            count("infrastructure"),
            count("errors")
        ),
        (3, 2, 2, 1, 1, 0),
        "critical + medium + high alerts: {received:?}"
    );
    let severities: Vec<&str> = received["logs"]
        .iter()
        .map(|t| t["severity"].as_str().unwrap())
        .collect();
    assert!(
        severities.contains(&"critical")
            && severities.contains(&"medium")
            && severities.contains(&"high")
    );

    // The incidents API, from its event fixture.
    let (status, list) = event(&app, "get-incidents.json").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["incidents"].as_array().unwrap().len(), 3);

    // A low-severity alert is recorded and dispatches nothing.
    let (status, low) = generic(
        &app,
        &json!({"sourceAlertId": "disk-low", "title": "disk 70%", "severity": "low"}),
    )
    .await;
    assert_eq!(status, 202);
    assert!(stack.run_triage(&triage).await.is_empty());
    for url in agents.values() {
        assert!(
            stack.drain(url).await.is_empty(),
            "low severity dispatched a task"
        );
    }
    let id = low["alerts"][0]["incidentId"].as_str().unwrap();
    let req = http::Request::builder()
        .uri(format!("/v1/tenants/demo/incidents/{id}"))
        .header("x-api-key", DEV_API_KEY)
        .body(lambda_http::Body::Empty)
        .unwrap();
    let (status, inc) = call(&app, req).await;
    assert_eq!(
        (status, inc["severity"].as_str(), inc["agents"].clone()),
        (200, Some("low"), json!([]))
    );

    // Paging through DynamoDB: newest first, a cursor while more remain.
    let page = |q: String| {
        let req = http::Request::builder()
            .uri(format!("/v1/tenants/demo/incidents{q}"))
            .header("x-api-key", DEV_API_KEY)
            .body(lambda_http::Body::Empty)
            .unwrap();
        let app = app.clone();
        async move { call(&app, req).await.1 }
    };
    let first = page("?limit=3".into()).await;
    assert_eq!(first["incidents"].as_array().unwrap().len(), 3);
    assert_eq!(first["incidents"][0]["incidentId"], id, "newest first");
    let cursor = first["nextCursor"]
        .as_str()
        .expect("a fourth incident remains")
        .to_owned();
    let rest = page(format!("?limit=3&cursor={cursor}")).await;
    assert_eq!(rest["incidents"].as_array().unwrap().len(), 1);
    assert!(rest.get("nextCursor").is_none());

    // A partial resolve: the resolved alert's agents get a cancel each, once.
    let (status, body) = event(&app, "webhook-grafana-partial-resolve.json").await;
    assert_eq!(status, 202, "{body}");
    assert!(stack.run_triage(&triage).await.is_empty());
    let cancels: usize = {
        let mut n = 0;
        for url in agents.values() {
            for b in stack.drain(url).await {
                let t: Value = serde_json::from_str(&b).unwrap();
                assert_eq!(t["kind"], "cancel");
                n += 1;
            }
        }
        n
    };
    assert!(cancels >= 1, "a resolve cancels the dispatched agents");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_fixture_is_accepted_by_the_ingest_router() {
    let stack = Stack::create().await;
    let app = stack.ingest().await;
    for (file, want) in [
        ("healthz.json", 200),
        ("webhook-datadog-triggered.json", 202),
        ("webhook-datadog-recovered.json", 202),
        ("webhook-grafana-firing.json", 202),
        ("webhook-grafana-partial-resolve.json", 202),
        ("webhook-grafana-oncall-escalation.json", 202),
        ("webhook-sentry-issue.json", 202),
        ("webhook-sentry-metric-alert.json", 202),
        ("webhook-cloudwatch-alarm.json", 202),
        ("webhook-generic-firing.json", 202),
        ("webhook-generic-resolved.json", 202),
        ("webhook-alertmanager-firing.json", 202),
        ("webhook-alertmanager-partial-resolve.json", 202),
        ("webhook-pagerduty-trigger.json", 202),
        ("webhook-pagerduty-acknowledge.json", 202),
        ("webhook-pagerduty-resolve.json", 202),
        ("get-incidents.json", 200),
    ] {
        let (status, body) = event(&app, file).await;
        assert_eq!(status, want, "{file}: {body}");
    }
    let (status, body) = event(&app, "webhook-datadog-recovered.json").await;
    assert_eq!(
        (status, body["alerts"][0]["outcome"].as_str()),
        (202, Some("ignored")),
        "a second recovery finds nothing open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_acknowledges_and_alertmanager_resolves_in_part_on_the_stack() {
    let stack = Stack::create().await;
    let app = stack.ingest().await;
    let triage = stack.triage();
    let incident = |id: String| {
        let app = app.clone();
        async move {
            let req = http::Request::builder()
                .uri(format!("/v1/tenants/demo/incidents{id}"))
                .header("authorization", format!("Bearer {DEV_API_KEY}"))
                .body(lambda_http::Body::Empty)
                .unwrap();
            call(&app, req).await.1
        }
    };

    // The key comes from the body's routing_key; the answer is PagerDuty's.
    let (status, t) = event(&app, "webhook-pagerduty-trigger.json").await;
    assert_eq!(
        (status, t["status"].as_str(), t["outcome"].as_str()),
        (202, Some("success"), Some("created")),
        "{t}"
    );
    assert_eq!(t["dedup_key"], "checkly-check-4f1e2a7b-eu-west-1");
    let id = t["incidentId"].as_str().unwrap().to_owned();
    assert!(stack.run_triage(&triage).await.is_empty());
    let (status, dup) = event(&app, "webhook-pagerduty-trigger.json").await;
    assert_eq!(
        (status, dup["outcome"].as_str(), dup["incidentId"].as_str()),
        (202, Some("duplicate"), Some(id.as_str())),
        "PagerDuty answers a repeated trigger 202"
    );

    let (status, a) = event(&app, "webhook-pagerduty-acknowledge.json").await;
    assert_eq!(
        (status, a["outcome"].as_str(), a["incidentId"].as_str()),
        (202, Some("acknowledged"), Some(id.as_str())),
        "{a}"
    );
    assert!(stack.run_triage(&triage).await.is_empty());
    let inc = incident(format!("/{id}")).await;
    assert_eq!(inc["status"], "acknowledged", "{inc}");
    assert!(inc["acknowledgedAt"].is_string(), "{inc}");
    let listed = incident("?status=acknowledged".into()).await;
    assert_eq!(
        listed["incidents"][0]["incidentId"],
        id.as_str(),
        "{listed}"
    );

    // Resolving an acknowledged incident: the write is conditional on the status it read.
    let (status, r) = event(&app, "webhook-pagerduty-resolve.json").await;
    assert_eq!((status, r["outcome"].as_str()), (202, Some("resolved")));
    assert!(stack.run_triage(&triage).await.is_empty());
    assert_eq!(incident(format!("/{id}")).await["status"], "resolved");
    assert_eq!(stack.dedup_items().await, 0, "the resolve released the key");

    // Alertmanager, key as Bearer: a group of two, then one of them resolved.
    let (status, fired) = event(&app, "webhook-alertmanager-firing.json").await;
    assert_eq!(status, 202, "{fired}");
    assert!(stack.run_triage(&triage).await.is_empty());
    let (status, part) = event(&app, "webhook-alertmanager-partial-resolve.json").await;
    let outcomes: Vec<&str> = part["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        (status, outcomes),
        (202, vec!["resolved", "duplicate"]),
        "{part}"
    );
    assert!(stack.run_triage(&triage).await.is_empty());
    let first = fired["alerts"][0]["incidentId"].as_str().unwrap();
    assert_eq!(incident(format!("/{first}")).await["status"], "resolved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_identical_webhooks_make_one_incident_and_a_resolve_releases_the_key() {
    let stack = Stack::create().await;
    let app = Arc::new(stack.ingest().await);
    let body = json!({"sourceAlertId": "storm", "title": "alert storm", "severity": "high"});
    let mut handles = Vec::new();
    for _ in 0..20 {
        let (app, body) = (app.clone(), body.clone());
        handles.push(tokio::spawn(async move { generic(&app, &body).await }));
    }
    // Exactly one request claims the key. The others either see it queued (409, naming its
    // incident) or still pending under the claimant's lease (503: retry), never a second 202.
    let mut statuses = BTreeMap::new();
    let mut ids = std::collections::BTreeSet::new();
    for h in handles {
        let (status, resp) = h.await.unwrap();
        *statuses.entry(status).or_insert(0) += 1;
        if status != 503 {
            ids.insert(
                resp["alerts"][0]["incidentId"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            );
        }
    }
    assert_eq!(statuses.get(&202), Some(&1), "{statuses:?}");
    assert_eq!(
        statuses.values().sum::<i32>(),
        statuses.get(&202).unwrap()
            + statuses.get(&409).unwrap_or(&0)
            + statuses.get(&503).unwrap_or(&0),
        "{statuses:?}"
    );
    // The retries of the 503s, once the claim is queued, are duplicates of the same incident.
    for _ in 0..*statuses.get(&503).unwrap_or(&0) {
        let (status, resp) = generic(&app, &body).await;
        assert_eq!(status, 409, "{resp}");
        ids.insert(resp["alerts"][0]["incidentId"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        ids.len(),
        1,
        "every answer names the same incident: {ids:?}"
    );
    let queued = stack
        .sqs
        .get_queue_attributes()
        .queue_url(&stack.refs["AlertQueue"])
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap();
    assert_eq!(
        queued.attributes.unwrap()[&QueueAttributeName::ApproximateNumberOfMessages],
        "1"
    );

    // Every 409 is counted on the incident, which the incidents API shows once triaged.
    assert!(stack.run_triage(&stack.triage()).await.is_empty());
    let id = ids.iter().next().unwrap().clone();
    let req = http::Request::builder()
        .uri(format!("/v1/tenants/demo/incidents/{id}"))
        .header("authorization", format!("Bearer {DEV_API_KEY}"))
        .body(lambda_http::Body::Empty)
        .unwrap();
    let (status, got) = call(&app, req).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["duplicateCount"], 19, "{got}");
    assert!(got["lastSeen"].as_str().unwrap() >= got["firstSeen"].as_str().unwrap());
    let req = http::Request::builder()
        .uri("/v1/tenants/demo/incidents")
        .header("authorization", format!("Bearer {DEV_API_KEY}"))
        .body(lambda_http::Body::Empty)
        .unwrap();
    let (_, list) = call(&app, req).await;
    assert_eq!(list["incidents"][0]["duplicateCount"], 19, "{list}");

    let (status, resp) = generic(
        &app,
        &json!({"sourceAlertId": "storm", "title": "alert storm", "status": "resolved"}),
    )
    .await;
    assert_eq!(
        (status, resp["alerts"][0]["outcome"].as_str()),
        (202, Some("resolved"))
    );
    assert_eq!(stack.dedup_items().await, 0, "the resolve released the key");
    let (status, resp) = generic(&app, &body).await;
    assert_eq!(
        (status, resp["alerts"][0]["outcome"].as_str()),
        (202, Some("created")),
        "{resp}"
    );
    assert!(!ids.contains(resp["alerts"][0]["incidentId"].as_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_queue_answers_503_and_leaves_no_dedup_record() {
    let stack = Stack::create().await;
    let mut config = stack.ingest_config();
    config.alert_queue_url = format!(
        "{}/123456789012/no-such-queue",
        endpoint().trim_end_matches('/')
    );
    stack.store_dev_key().await;
    let app = router(ingest_state(&stack.sdk, &config));
    let (status, body) = generic(&app, &json!({"sourceAlertId": "q", "title": "queue down"})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "unavailable");
    assert_eq!(stack.dedup_items().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_leases_are_taken_over_and_expired_records_release_the_key() {
    let stack = Stack::create().await;
    let app = stack.ingest().await;
    let table = &stack.refs["DedupTable"];
    let now = chrono::Utc::now().timestamp_millis();
    let put = |id: &str, incident: &str, pending: bool, lease: i64, expires: i64| {
        stack
            .ddb
            .put_item()
            .table_name(table)
            .item("pk", AttributeValue::S(dedup_pk("demo", "generic", id)))
            .item("incidentId", AttributeValue::S(incident.into()))
            .item("pending", AttributeValue::Bool(pending))
            .item("leaseUntil", AttributeValue::N(lease.to_string()))
            .item("expiresAt", AttributeValue::N(expires.to_string()))
            .send()
    };
    // A writer died after its conditional put: the retry after the lease finishes the job under
    // the same incident id.
    put(
        "stale",
        "inc_from_dead_writer",
        true,
        now - 1,
        now + 3_600_000,
    )
    .await
    .unwrap();
    let (status, resp) = generic(&app, &json!({"sourceAlertId": "stale", "title": "x"})).await;
    assert_eq!(
        (status, resp["alerts"][0]["incidentId"].as_str()),
        (202, Some("inc_from_dead_writer")),
        "{resp}"
    );
    // A live lease is a request in flight (or one that died after its put): retry later,
    // never a 409 that the sender would count as delivered.
    put(
        "inflight",
        "inc_in_flight",
        true,
        now + 60_000,
        now + 3_600_000,
    )
    .await
    .unwrap();
    let (status, resp) = generic(&app, &json!({"sourceAlertId": "inflight", "title": "x"})).await;
    assert_eq!(
        (status, resp["code"].as_str()),
        (503, Some("unavailable")),
        "{resp}"
    );
    // Expired (TTL not yet swept, as in the emulator): a new incident.
    put("old", "inc_expired", false, 0, now - 1).await.unwrap();
    let (status, resp) = generic(&app, &json!({"sourceAlertId": "old", "title": "x"})).await;
    assert_eq!(status, 202);
    assert_ne!(resp["alerts"][0]["incidentId"], "inc_expired");
    let item = stack
        .ddb
        .get_item()
        .table_name(table)
        .key(
            "pk",
            AttributeValue::S(dedup_pk("demo", "generic", "stale")),
        )
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(
        item["pending"],
        AttributeValue::Bool(false),
        "marked queued"
    );
    assert!(item.contains_key("ttl"), "records carry the TTL attribute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_fail_alone_redelivery_dispatches_nothing_twice_and_dead_letters_after_five()
{
    let stack = Stack::create().await;
    let triage = stack.triage();
    let agents = stack.agent_queues().await;

    // The fixture batch: two alerts and one poison record.
    let text = std::fs::read_to_string(Path::new(ROOT).join("events/sqs-triage.json")).unwrap();
    let event: SqsEvent = serde_json::from_str(&text).unwrap();
    let poison: Vec<String> = event
        .records
        .iter()
        .filter(|r| {
            serde_json::from_str::<causeflow_shared::model::QueuedAlert>(r.body.as_deref().unwrap())
                .is_err()
        })
        .map(|r| r.message_id.clone().unwrap())
        .collect();
    assert_eq!(poison.len(), 1);
    let resp = ::triage::handle(event.clone(), &triage).await;
    let failed: Vec<String> = resp
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    assert_eq!(failed, poison, "only the poison record is reported");
    let mut first = 0;
    for url in agents.values() {
        first += stack.drain(url).await.len();
    }
    assert!(first > 0);
    // Redelivered: conditional writes, no second dispatch.
    let resp = ::triage::handle(event, &triage).await;
    assert_eq!(resp.batch_item_failures.len(), 1);
    for url in agents.values() {
        assert!(
            stack.drain(url).await.is_empty(),
            "a redelivery dispatched again"
        );
    }

    // Through the real queue: a poison message lands in the DLQ after 5 receives.
    let queue = &stack.refs["AlertQueue"];
    stack
        .sqs
        .send_message()
        .queue_url(queue)
        .message_body("{\"not\":\"a queued alert\"}")
        .send()
        .await
        .unwrap();
    let mut receives = 0;
    for _ in 0..20 {
        let out = stack
            .sqs
            .receive_message()
            .queue_url(queue)
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
        let msgs = out.messages.unwrap_or_default();
        if msgs.is_empty() {
            break;
        }
        receives += 1;
        let ev = sqs_event(
            msgs.iter()
                .map(|m| (m.message_id.clone().unwrap(), m.body.clone().unwrap())),
        );
        assert_eq!(
            ::triage::handle(ev, &triage)
                .await
                .batch_item_failures
                .len(),
            1
        );
    }
    assert_eq!(receives, 5);
    let dlq = stack.drain(&stack.refs["AlertDeadLetterQueue"]).await;
    assert_eq!(dlq, ["{\"not\":\"a queued alert\"}"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_subscription_is_confirmed_with_the_api_in_the_topics_region() {
    use causeflow_shared::ports::{SubscriptionState, Subscriptions};
    use common::sns_signing::{confirmation, notification, FakeHttps, SnsSigner, CERT_URL};
    let stack = Stack::create().await;
    let config = stack.ingest_config();
    let dir = stack.store_dev_key().await;
    // The customer's topic, in the emulator.
    let topic = stack
        .sns
        .create_topic()
        .name(format!("alarms-{}", uuid_suffix()))
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    dir.allow_topic("demo", &topic, true).await.unwrap();
    let signer = SnsSigner::new();
    let https = FakeHttps::new(&signer.cert_pem);
    let app = router(causeflow_shared::host::lambda::ingest_state_with(
        &stack.sdk,
        &config,
        https.clone(),
    ));
    let post = |env: serde_json::Map<String, Value>| {
        let app = app.clone();
        async move {
            let req = http::Request::builder()
                .method("POST")
                .uri("/v1/webhooks/demo/cloudwatch")
                .header("content-type", "text/plain; charset=UTF-8")
                .header("x-amz-sns-message-type", env["Type"].as_str().unwrap())
                .body(lambda_http::Body::from(Value::Object(env).to_string()))
                .unwrap();
            call(&app, req).await
        }
    };

    let mut env = confirmation("SubscriptionConfirmation", &topic, "moto-token-1");
    signer.sign(&mut env, "2");
    let (status, body) = post(env).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["subscription"], "confirmed");
    // Confirmed through the API: the SubscribeURL itself was never fetched.
    assert_eq!(https.calls(), [CERT_URL]);
    let subs = causeflow_shared::aws::DynamoSubscriptions::new(
        stack.ddb.clone(),
        &config.subscriptions_table,
    )
    .list("demo")
    .await
    .unwrap();
    assert_eq!(subs.len(), 1);
    assert_eq!(
        (subs[0].topic_arn.as_str(), subs[0].state),
        (topic.as_str(), SubscriptionState::Confirmed)
    );

    // Alarms from the topic then flow into the queue.
    let mut env = notification(&topic, "ALARM", Some("ALARM: api-5xx-rate"));
    signer.sign(&mut env, "1");
    let (status, body) = post(env).await;
    assert_eq!(status, 202, "{body}");

    // Unsubscribe: acknowledged, recorded, never confirmed.
    let mut env = confirmation("UnsubscribeConfirmation", &topic, "moto-token-2");
    signer.sign(&mut env, "2");
    let (status, _) = post(env).await;
    assert_eq!(status, 200);
    let subs = causeflow_shared::aws::DynamoSubscriptions::new(
        stack.ddb.clone(),
        &config.subscriptions_table,
    )
    .list("demo")
    .await
    .unwrap();
    assert_eq!(subs[0].state, SubscriptionState::Unsubscribed);
}

/// The dependencies (name and spec) of a function's Cargo.toml.
fn function_dependencies(function: &str) -> BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(Path::new(ROOT).join(format!("functions/{function}/Cargo.toml")))
            .unwrap();
    let section = text
        .split("[dependencies]")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap();
    section
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().trim_end_matches(".workspace").to_owned(),
                v.trim().to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_functions_resolve_one_dependency_set_so_sam_builds_share_work() {
    // docs/operations.md: each function alone (as `sam build` builds it) must resolve every
    // shared dependency with the same features as the others.
    let ingest = function_dependencies("ingest");
    assert_eq!(ingest, function_dependencies("triage"));
    // The console differs only in the shared crate's `console` feature.
    let mut console = function_dependencies("console");
    let shared = console.remove("causeflow-shared").unwrap();
    assert!(
        shared.contains(r#"features = ["aws", "console", "emf"]"#)
            && shared.contains("default-features = false"),
        "{shared}"
    );
    let mut others = ingest.clone();
    assert!(others.remove("causeflow-shared").is_some());
    assert_eq!(console, others);
}

#[test]
fn the_console_function_is_routed_and_holds_only_its_own_permissions() {
    let t = template();
    let events = t["Resources"]["ConsoleFunction"]["Properties"]["Events"]
        .as_object()
        .unwrap();
    let routed: Vec<String> = events
        .values()
        .map(|e| {
            format!(
                "{} {}",
                e["Properties"]["Method"].as_str().unwrap(),
                e["Properties"]["Path"].as_str().unwrap()
            )
        })
        .collect();
    for route in [
        "ANY /console",
        "ANY /console/{proxy+}",
        "GET /v1/tenants/{tenantId}/keys",
        "POST /v1/tenants/{tenantId}/keys",
        "ANY /v1/tenants/{tenantId}/keys/{proxy+}",
        "ANY /v1/tenants/{tenantId}/agents",
        "ANY /v1/tenants/{tenantId}/topics",
        "GET /v1/tenants/{tenantId}/subscriptions",
        "POST /v1/tenants/{tenantId}/test-alert",
    ] {
        assert!(routed.iter().any(|r| r == route), "{route}: {routed:?}");
    }
    let table = &t["Resources"]["ConsoleSessionsTable"]["Properties"];
    assert_eq!(table["TimeToLiveSpecification"]["AttributeName"], "ttl");
    assert_eq!(table["GlobalSecondaryIndexes"][0]["IndexName"], "byTenant");
    // Only the console's role may touch the sessions table; ingest and triage gained nothing.
    let policy = |role: &str| t["Resources"][role]["Properties"]["Policies"].to_string();
    assert!(policy("ConsoleFunctionRole").contains("ConsoleSessionsTable"));
    for role in ["IngestFunctionRole", "TriageFunctionRole"] {
        assert!(!policy(role).contains("ConsoleSessionsTable"), "{role}");
    }
    // The console reads incidents and dispatch markers, never writes them, never receives from
    // the queue or publishes agent tasks, and names every resource it may touch.
    let statements = t["Resources"]["ConsoleFunctionRole"]["Properties"]["Policies"][0]
        ["PolicyDocument"]["Statement"]
        .as_array()
        .unwrap();
    for s in statements {
        let resource = s["Resource"].to_string();
        let actions: Vec<&str> = s["Action"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_ne!(s["Resource"], "*", "{s}");
        let allowed: &[&str] = if resource.contains("IncidentsTable") {
            &["dynamodb:GetItem", "dynamodb:Query"]
        } else if resource.contains("DispatchTable") {
            &["dynamodb:BatchGetItem"]
        } else if resource.contains("AlertQueue") {
            &["sqs:SendMessage"]
        } else {
            &[]
        };
        for a in &actions {
            assert!(!a.starts_with("sns:"), "{s}");
            assert!(
                allowed.is_empty() || allowed.contains(a),
                "{a} on {resource}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_key_goes_only_into_an_emulator_on_this_machine() {
    let stack = Stack::create().await;
    let config = stack.ingest_config();
    let create_dev = |vars: &[(&str, &str)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_causeflow"))
            .args(["keys", "create-dev", "--aws"])
            .args(["--keys-table", &config.keys_table])
            .args(["--tenants-table", &config.tenants_table])
            .envs(vars.iter().copied())
            .output()
            .unwrap()
    };
    // A real AWS endpoint is refused before any call is made, also when it hides in the
    // per-service variable that overrides the global one, or behind the switch that ignores
    // configured endpoints.
    let emulator = endpoint();
    for vars in [
        vec![(
            "AWS_ENDPOINT_URL",
            "https://dynamodb.eu-west-1.amazonaws.com",
        )],
        vec![
            ("AWS_ENDPOINT_URL", emulator.as_str()),
            (
                "AWS_ENDPOINT_URL_DYNAMODB",
                "https://dynamodb.eu-west-1.amazonaws.com",
            ),
        ],
        vec![
            ("AWS_ENDPOINT_URL", emulator.as_str()),
            ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true"),
        ],
    ] {
        let out = create_dev(&vars);
        assert!(!out.status.success(), "{vars:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("emulator on this machine"),
            "{vars:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The emulator on loopback takes it, and the events/ fixtures authenticate with it.
    let out = create_dev(&[("AWS_ENDPOINT_URL", emulator.as_str())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app = router(ingest_state(&stack.sdk, &config));
    let (status, body) = event(&app, "webhook-generic-firing.json").await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_manages_keys_and_topics_in_the_stack_tables() {
    let stack = Stack::create().await;
    let config = stack.ingest_config();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_causeflow"))
            .args(args)
            .args([
                "--aws",
                "--keys-table",
                &config.keys_table,
                "--tenants-table",
                &config.tenants_table,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let key: Value = serde_json::from_str(&cli(&[
        "keys", "create", "--tenant", "acme", "--name", "grafana", "--json",
    ]))
    .unwrap();
    let app = router(ingest_state(&stack.sdk, &config));
    let body = json!({"sourceAlertId": "cli-1", "title": "from a CLI-made key"}).to_string();
    let send = |key: &Value| {
        let body = body.clone();
        let req = http::Request::builder()
            .method("POST")
            .uri("/v1/webhooks/acme/generic")
            .header("content-type", "application/json")
            .header("x-api-key", key["apiKey"].as_str().unwrap())
            .header(
                "x-webhook-signature",
                sign(key["webhookSecret"].as_str().unwrap(), &[body.as_bytes()]),
            )
            .body(lambda_http::Body::from(body))
            .unwrap();
        let app = app.clone();
        async move { call(&app, req).await.0 }
    };
    assert_eq!(send(&key).await, 202);
    let listed = cli(&["keys", "list", "--tenant", "acme", "--json"]);
    assert!(
        listed.contains(key["keyId"].as_str().unwrap())
            && !listed.contains(key["apiKey"].as_str().unwrap())
    );
    cli(&[
        "keys",
        "revoke",
        "--tenant",
        "acme",
        "--key",
        key["keyId"].as_str().unwrap(),
    ]);
    assert_eq!(send(&key).await, 401);
    cli(&[
        "tenants",
        "allow-topic",
        "--tenant",
        "acme",
        "--topic",
        "arn:aws:sns:eu-west-1:123456789012:alarms",
    ]);
    let dir = causeflow_shared::aws::DynamoDirectory::new(
        stack.ddb.clone(),
        &config.keys_table,
        &config.tenants_table,
    );
    use causeflow_shared::ports::TopicAllowList;
    assert!(dir
        .topic_allowed("acme", "arn:aws:sns:eu-west-1:123456789012:alarms")
        .await
        .unwrap());
    assert!(!dir
        .topic_allowed("acme", "arn:aws:sns:eu-west-1:123456789012:other")
        .await
        .unwrap());
}

/// Counts the AWS API calls made through the clients it is installed on.
#[derive(Debug, Default, Clone)]
struct CallCounter(Arc<std::sync::atomic::AtomicUsize>);

impl aws_smithy_runtime_api::client::interceptors::Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "CallCounter"
    }
    fn read_before_execution(
        &self,
        _: &aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef<'_>,
        _: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// The DynamoDB ledger of this stack, held directly (for its test hook), and a router over it;
/// `calls` counts the ledger's AWS calls.
fn ledger_and_router(
    stack: &Stack,
    calls: &CallCounter,
) -> (Arc<causeflow_shared::aws::DynamoLedger>, axum::Router) {
    let config = stack.ingest_config();
    let ddb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&stack.sdk)
            .interceptor(calls.clone())
            .build(),
    );
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&stack.sdk)
            .interceptor(calls.clone())
            .build(),
    );
    let ledger = Arc::new(causeflow_shared::aws::DynamoLedger::new(
        ddb,
        sqs,
        &config.dedup_table,
        &config.alert_queue_url,
        config.dedup,
    ));
    let state = causeflow_shared::http::AppState::new(
        Arc::new(causeflow_shared::aws::DynamoDirectory::new(
            stack.ddb.clone(),
            &config.keys_table,
            &config.tenants_table,
        )),
        ledger.clone(),
        Arc::new(causeflow_shared::aws::DynamoIncidents::new(
            stack.ddb.clone(),
            &config.incidents_table,
        )),
        causeflow_shared::http::RateLimit {
            per_sec: 0.0,
            burst: 0.0,
        },
    );
    (ledger, router(Arc::new(state)))
}

fn generic_alert(id: &str) -> causeflow_shared::model::Alert {
    use causeflow_shared::model::{Alert, AlertStatus, Severity};
    Alert {
        source_alert_id: id.into(),
        status: AlertStatus::Firing,
        title: "x".into(),
        title_truncated: false,
        message: None,
        severity: Severity::High,
        service: None,
        environment: None,
        tags: Default::default(),
        links: vec![],
        test: false,
        unsigned: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_writer_died_is_retried_not_answered_409() {
    use causeflow_shared::error::StoreError;
    use causeflow_shared::model::Provider;
    use causeflow_shared::ports::AlertLedger;
    let stack = Stack::create().await;
    let _ = stack.ingest().await; // stores the development key
    let (ledger, app) = ledger_and_router(&stack, &CallCounter::default());
    let t0 = chrono::Utc::now();
    let alert = [generic_alert("dies")];
    // The invocation dies between its conditional put and its SQS send.
    let crash = ledger.crash_after_claim();
    crash.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(ledger
        .admit("demo", Provider::Generic, &alert, t0)
        .await
        .is_err());
    crash.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        stack.drain(&stack.refs["AlertQueue"]).await.len(),
        0,
        "nothing was queued"
    );
    // The sender retries a second later: 503 with the lease's remaining time, never a 409.
    let retry = t0 + chrono::Duration::seconds(1);
    match ledger.admit("demo", Provider::Generic, &alert, retry).await {
        Err(StoreError::InFlight { retry_after }) => {
            assert!(
                retry_after > std::time::Duration::from_secs(13),
                "{retry_after:?}"
            );
            assert!(
                retry_after <= std::time::Duration::from_secs(14),
                "{retry_after:?}"
            );
        }
        other => panic!("expected in-flight, got {other:?}"),
    }
    let (status, resp) = generic(&app, &json!({"sourceAlertId": "dies", "title": "x"})).await;
    assert_eq!(
        (status, resp["code"].as_str()),
        (503, Some("unavailable")),
        "{resp}"
    );
    // Once the lease has run out the retry takes the claim over and queues the alert.
    let later = t0 + chrono::Duration::seconds(16);
    let results = ledger
        .admit("demo", Provider::Generic, &alert, later)
        .await
        .unwrap();
    assert_eq!(
        results[0].outcome,
        causeflow_shared::model::Outcome::Created
    );
    let queued = stack.drain(&stack.refs["AlertQueue"]).await;
    assert_eq!(queued.len(), 1);
    assert!(queued[0].contains(results[0].incident_id.as_deref().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_request_is_admitted_with_batched_calls() {
    let stack = Stack::create().await;
    let _ = stack.ingest().await; // stores the development key
    let calls = CallCounter::default();
    let (_, app) = ledger_and_router(&stack, &calls);
    let cap = causeflow_shared::http::DEFAULT_MAX_ALERTS;
    // Every alert of a full request, with repeats of one fingerprint and text SQS would refuse.
    let mut alerts: Vec<Value> = (0..cap - 2)
        .map(|i| json!({"status": "firing", "fingerprint": format!("fp{i}"), "labels": {"alertname": format!("A{i}")},
                         "annotations": {"summary": "noncharacters \u{FFFE}\u{FFFF}"}}))
        .collect();
    alerts.push(json!({"status": "resolved", "fingerprint": "fp0", "labels": {}}));
    alerts.push(json!({"status": "firing", "fingerprint": "fp0", "labels": {}}));
    let body =
        json!({"receiver": "causeflow", "status": "firing", "version": "1", "alerts": alerts})
            .to_string();
    let req = http::Request::builder()
        .method("POST")
        .uri("/v1/webhooks/demo/grafana")
        .header("content-type", "application/json")
        .header("x-api-key", DEV_API_KEY)
        .header(
            "x-webhook-signature",
            sign(DEV_WEBHOOK_SECRET, &[body.as_bytes()]),
        )
        .body(lambda_http::Body::from(body.clone()))
        .unwrap();
    let started = std::time::Instant::now();
    let (status, resp) = call(&app, req).await;
    let full = started.elapsed();
    let full_calls = calls.0.swap(0, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(status, 202, "{resp}");
    let outcomes: Vec<&str> = resp["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes.len(), cap);
    assert!(outcomes[..cap - 2].iter().all(|o| *o == "created"));
    // In request order: fp0 opened, resolved, and opened again.
    assert_eq!(&outcomes[cap - 2..], ["resolved", "created"]);
    assert_ne!(
        resp["alerts"][0]["incidentId"],
        resp["alerts"][cap - 1]["incidentId"]
    );
    let queued = stack.drain(&stack.refs["AlertQueue"]).await;
    assert_eq!(
        queued.len(),
        cap,
        "every firing and the resolve were queued"
    );
    assert!(queued
        .iter()
        .all(|b| b.chars().all(causeflow_shared::model::sqs_accepts)));
    // A one-alert request on the same emulator, as the baseline of the figure.
    let started = std::time::Instant::now();
    let (status, _) = generic(&app, &json!({"sourceAlertId": "one", "title": "x"})).await;
    let one = started.elapsed();
    assert_eq!(status, 202);
    let one_calls = calls.0.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "admission against the emulator: {cap} alerts in {:.0} ms with {full_calls} AWS calls; \
         1 alert in {:.1} ms with {one_calls} calls",
        full.as_secs_f64() * 1000.0,
        one.as_secs_f64() * 1000.0,
    );
    // Batched: reads by 100, claims and marks by 100 in transactions, sends by 10, so the
    // call count grows with a tenth of the alerts, not four times them.
    assert!(full_calls <= cap / 4, "{full_calls} calls for {cap} alerts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_that_fails_its_last_receive_releases_its_key() {
    use aws_sdk_sqs::types::MessageSystemAttributeName;
    let stack = Stack::create().await;
    let app = stack.ingest().await;
    let body = json!({"sourceAlertId": "doomed", "title": "x"});
    let (status, first) = generic(&app, &body).await;
    assert_eq!(status, 202);
    // Triage that cannot write incidents (its table is gone): every receive fails.
    let mut broken = stack.triage_config();
    broken.incidents_table = "missing-table".into();
    let broken = triage(&stack.sdk, &broken);
    let queue = &stack.refs["AlertQueue"];
    let mut receives = 0;
    loop {
        let msgs = stack
            .sqs
            .receive_message()
            .queue_url(queue)
            .visibility_timeout(0)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        if msgs.is_empty() {
            break;
        }
        receives += 1;
        let mut event = sqs_event(
            msgs.iter()
                .map(|m| (m.message_id.clone().unwrap(), m.body.clone().unwrap())),
        );
        for (record, m) in event.records.iter_mut().zip(&msgs) {
            let count = m.attributes.as_ref().unwrap()
                [&MessageSystemAttributeName::ApproximateReceiveCount]
                .clone();
            record
                .attributes
                .insert("ApproximateReceiveCount".into(), count);
        }
        assert_eq!(
            ::triage::handle(event, &broken)
                .await
                .batch_item_failures
                .len(),
            1
        );
        // Until the last receive the key stands: a new firing is a duplicate.
        if receives < 5 {
            assert_eq!(generic(&app, &body).await.0, 409);
        }
        assert!(receives <= 5, "never dead-lettered");
    }
    assert_eq!(receives, 5);
    // The key went with it: the next firing opens a new incident instead of a 409 naming one
    // that never existed.
    let (status, again) = generic(&app, &body).await;
    assert_eq!(
        (status, again["alerts"][0]["outcome"].as_str()),
        (202, Some("created"))
    );
    assert_ne!(
        again["alerts"][0]["incidentId"],
        first["alerts"][0]["incidentId"]
    );

    // The operator finds it in the dead-letter queue and, after the fix, redrives it: it joins
    // the incident open for its key by now.
    let listed = stack.cli(&["dead-letters", "list", "--json"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["alert"]["alert"]["sourceAlertId"], "doomed");
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    let redriven = stack.cli(&["dead-letters", "redrive", "--id", &id, "--json"]);
    assert_eq!(redriven[0]["result"]["outcome"], "duplicate", "{redriven}");
    assert_eq!(
        redriven[0]["result"]["incidentId"],
        again["alerts"][0]["incidentId"]
    );
    assert!(stack
        .drain(&stack.refs["AlertDeadLetterQueue"])
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_are_listed_from_the_stack_by_the_cli() {
    let stack = Stack::create().await;
    let app = stack.ingest().await;
    let (status, _) = generic(&app, &json!({"sourceAlertId": "cli-listed", "title": "x"})).await;
    assert_eq!(status, 202);
    assert!(stack.run_triage(&stack.triage()).await.is_empty());
    let listed = stack.cli(&["incidents", "list", "--tenant", "demo", "--json"]);
    assert_eq!(listed[0]["sourceAlertId"], "cli-listed", "{listed}");
}

/// The console function's settings for this stack, from the template's environment.
fn console_config(stack: &Stack) -> ConsoleLambdaConfig {
    let env = stack.env("ConsoleFunction");
    ConsoleLambdaConfig {
        keys_table: env["KEYS_TABLE"].clone(),
        tenants_table: env["TENANTS_TABLE"].clone(),
        dedup_table: env["DEDUP_TABLE"].clone(),
        alert_queue_url: env["ALERT_QUEUE_URL"].clone(),
        incidents_table: env["INCIDENTS_TABLE"].clone(),
        dispatch_table: env["DISPATCH_TABLE"].clone(),
        subscriptions_table: env["SUBSCRIPTIONS_TABLE"].clone(),
        sessions_table: env["SESSIONS_TABLE"].clone(),
        public_url: Some(env["PUBLIC_URL"].clone()).filter(|u| !u.is_empty()),
        rate_limit_per_sec: 0.0,
        dedup: causeflow_shared::dedup::DedupConfig::default(),
    }
}

/// A console response: status, headers and body text.
async fn console_call(
    app: &axum::Router,
    req: http::Request<axum::body::Body>,
) -> (u16, http::HeaderMap, String) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// An incident as triage would record it, with `title` and no agents.
fn stored_incident(tenant: &str, id: &str, title: &str) -> causeflow_shared::model::Incident {
    use causeflow_shared::model::{Incident, IncidentStatus, Provider, Severity};
    Incident {
        tenant_id: tenant.into(),
        incident_id: id.into(),
        provider: Provider::Generic,
        source_alert_id: format!("src-{id}"),
        title: title.into(),
        title_truncated: false,
        message: None,
        severity: Severity::High,
        status: IncidentStatus::Open,
        service: None,
        environment: None,
        tags: Default::default(),
        links: vec![],
        test: false,
        first_seen: "2026-01-01T00:00:00.000Z".into(),
        last_seen: "2026-01-01T00:00:00.000Z".into(),
        resolved_at: None,
        acknowledged_at: None,
        agents: vec![],
        duplicate_count: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_once_and_manages_keys_on_the_stack() {
    use causeflow_shared::aws::DynamoSessions;
    use causeflow_shared::console::create_sign_in_link;
    use causeflow_shared::host::lambda::console_state;
    use causeflow_shared::ports::ConsoleSessions;
    const HOST: &str = "console.test";
    let stack = Stack::create().await;
    let config = console_config(&stack);
    let app = causeflow_shared::console::router(console_state(&stack.sdk, &config));
    let sessions = DynamoSessions::new(stack.ddb.clone(), &config.sessions_table);

    let link = create_sign_in_link(
        &sessions,
        "demo",
        std::time::Duration::from_secs(600),
        &format!("http://{HOST}"),
    )
    .await
    .unwrap();
    let token = link
        .strip_prefix(&format!("http://{HOST}/console/signin?token="))
        .unwrap_or_else(|| panic!("{link}"))
        .to_owned();
    // Requests as a browser on the console's own origin sends them.
    let request = |method: &str, uri: &str, cookie: Option<&str>| {
        let mut b = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", HOST)
            .header("origin", format!("http://{HOST}"));
        if let Some(c) = cookie {
            b = b.header("cookie", c);
        }
        b
    };
    let sign_in = |token: String| {
        let req = request("POST", "/console/signin", None)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(axum::body::Body::from(format!("token={token}")))
            .unwrap();
        let app = app.clone();
        async move { console_call(&app, req).await }
    };

    let (status, headers, body) = sign_in(token.clone()).await;
    assert!((300..400).contains(&status), "{status}: {body}");
    let set_cookie = headers["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with("cf_console="), "{set_cookie}");
    let get = |uri: String| {
        let req = request("GET", &uri, Some(&cookie))
            .body(axum::body::Body::empty())
            .unwrap();
        let app = app.clone();
        async move { console_call(&app, req).await }
    };

    let (status, _, body) = get("/v1/tenants/demo/keys".into()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!([]));
    let (status, _, html) = get("/console/t/demo/keys".into()).await;
    assert_eq!(status, 200, "{html}");
    let csrf = html
        .split(r#"<meta name="csrf-token" content=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no csrf-token meta tag: {html}"))
        .to_owned();
    assert!(!csrf.is_empty());
    let post = |uri: &str, body: Value, csrf: Option<&str>| {
        let mut b = request("POST", uri, Some(&cookie)).header("content-type", "application/json");
        if let Some(c) = csrf {
            b = b.header("x-csrf-token", c);
        }
        let req = b.body(axum::body::Body::from(body.to_string())).unwrap();
        let app = app.clone();
        async move { console_call(&app, req).await }
    };

    // A write needs the session's CSRF token.
    let (status, _, body) = post("/v1/tenants/demo/keys", json!({"name": "x"}), None).await;
    assert_eq!(status, 403, "{body}");
    let (status, headers, body) =
        post("/v1/tenants/demo/keys", json!({"name": "x"}), Some(&csrf)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    let created: Value = serde_json::from_str(&body).unwrap();
    let (api_key, secret) = (
        created["apiKey"].as_str().unwrap().to_owned(),
        created["webhookSecret"].as_str().unwrap().to_owned(),
    );
    assert!(
        api_key.starts_with("cf_") && !secret.is_empty(),
        "{created}"
    );
    let (_, _, body) = get("/v1/tenants/demo/keys".into()).await;
    let keys: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1, "{keys}");
    assert_eq!(keys[0]["name"], "x");
    assert!(!body.contains(&secret), "a listing never shows secrets");

    // The key made in the console authenticates a webhook on the ingest function.
    let ingest = router(ingest_state(&stack.sdk, &stack.ingest_config()));
    let payload =
        json!({"sourceAlertId": "console-key", "title": "made with a console key"}).to_string();
    let req = http::Request::builder()
        .method("POST")
        .uri("/v1/webhooks/demo/generic")
        .header("content-type", "application/json")
        .header("x-api-key", &api_key)
        .header("x-webhook-signature", sign(&secret, &[payload.as_bytes()]))
        .body(lambda_http::Body::from(payload))
        .unwrap();
    let (status, body) = call(&ingest, req).await;
    assert_eq!(status, 202, "{body}");
    // Its use is recorded (in the background, in the dedup table) and listed by the console.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, _, body) = get("/v1/tenants/demo/keys".into()).await;
        let keys: Value = serde_json::from_str(&body).unwrap();
        if keys[0]["lastUsedAt"].is_string() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "last use never recorded: {keys}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Send test alert: through DynamoLedger and the alert queue, then triage, like a webhook.
    let (status, _, body) = post("/v1/tenants/demo/test-alert", json!({}), Some(&csrf)).await;
    assert_eq!(status, 202, "{body}");
    let sent: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(sent["outcome"], "created", "{sent}");
    let id = sent["incidentId"].as_str().unwrap().to_owned();
    assert!(stack.run_triage(&stack.triage()).await.is_empty());
    let (status, _, body) = get(format!("/console/t/demo/incidents/{id}")).await;
    assert_eq!(status, 200, "{body}");

    // Signed in to demo only: another tenant's API answers as if it did not exist.
    let (status, _, _) = get("/v1/tenants/other/keys".into()).await;
    assert_eq!(status, 404);

    // The link was used up by the first sign-in.
    let (status, headers, _) = sign_in(token).await;
    assert_eq!(status, 401);
    assert!(headers.get("set-cookie").is_none());

    // `causeflow sessions revoke`: the browser is signed out on its next request.
    assert_eq!(sessions.revoke_tenant("demo").await.unwrap(), 1);
    let (status, _, body) = get("/v1/tenants/demo/keys".into()).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamo_sessions_redeem_links_once_and_revoke_by_tenant() {
    use causeflow_shared::aws::DynamoSessions;
    use causeflow_shared::ports::{ConsoleSession, ConsoleSessions};
    let stack = Stack::create().await;
    let table = stack.refs["ConsoleSessionsTable"].clone();
    let s = DynamoSessions::new(stack.ddb.clone(), &table);
    let now = causeflow_shared::now_ms();
    let raw = |id: String| {
        let ddb = stack.ddb.clone();
        let table = table.clone();
        async move {
            ddb.get_item()
                .table_name(table)
                .key("id", AttributeValue::S(id))
                .consistent_read(true)
                .send()
                .await
                .unwrap()
                .item
        }
    };

    // Unknown and expired links give nothing.
    assert_eq!(s.redeem_link("unknown", now).await.unwrap(), None);
    s.create_link("demo", "expired", now - 1).await.unwrap();
    assert_eq!(s.redeem_link("expired", now).await.unwrap(), None);

    // Two concurrent redemptions of one link. DynamoDB serialises conditional writes to one
    // item, so exactly one gets the tenant. moto checks the condition and applies the update in
    // separate steps without a lock, so under load it can let both through (seen in a CI run).
    // Each round therefore asserts what moto does guarantee (someone wins, and nobody after),
    // and the rounds together must show the condition at work (a round with a single winner); a
    // redemption without its condition fails both. SQLite's redemption is tested concurrently
    // in sqlite/sessions.rs.
    let mut single = 0;
    for i in 0..6 {
        let h = format!("race-{i}");
        s.create_link("demo", &h, now + 60_000).await.unwrap();
        let (a, b) = tokio::join!(s.redeem_link(&h, now), s.redeem_link(&h, now));
        let won: Vec<String> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
        assert!(
            !won.is_empty() && won.iter().all(|t| t == "demo"),
            "{h}: {won:?}"
        );
        single += usize::from(won.len() == 1);
        assert_eq!(s.redeem_link(&h, now + 1).await.unwrap(), None, "{h}");
    }
    assert!(single > 0, "every concurrent redemption let both through");
    // Expiry in ms for the code, TTL in seconds (never before expiry) for DynamoDB.
    let link = raw("link#race-0".into()).await.unwrap();
    assert_eq!(
        link["expiresAt"],
        AttributeValue::N((now + 60_000).to_string())
    );
    let ttl: i64 = link["ttl"].as_n().unwrap().parse().unwrap();
    assert!(
        ttl * 1000 >= now + 60_000 && ttl * 1000 < now + 62_000,
        "{ttl}"
    );
    assert!(link.contains_key("usedAt"));

    // A session reads back, its idle clock only moves forward, and sign-out ends it.
    let mut session = ConsoleSession {
        tenant_id: "demo".into(),
        csrf_token: "csrf-1".into(),
        created_at_ms: now,
        last_seen_ms: now,
    };
    s.create_session("s1", &session, now + 3_600_000)
        .await
        .unwrap();
    assert_eq!(s.session("s1").await.unwrap(), Some(session.clone()));
    s.touch("s1", now + 5_000).await.unwrap();
    s.touch("s1", now + 1_000).await.unwrap();
    session.last_seen_ms = now + 5_000;
    assert_eq!(s.session("s1").await.unwrap(), Some(session.clone()));
    s.end_session("s1").await.unwrap();
    assert_eq!(s.session("s1").await.unwrap(), None);
    // Touching a session that is gone brings nothing back.
    s.touch("s1", now + 9_000).await.unwrap();
    assert!(raw("session#s1".into()).await.is_none());

    // Revoking a tenant ends its sessions and links, and only its own.
    for (h, tenant) in [("s2", "demo"), ("s3", "demo"), ("s4", "other")] {
        let one = ConsoleSession {
            tenant_id: tenant.into(),
            ..session.clone()
        };
        s.create_session(h, &one, now + 3_600_000).await.unwrap();
    }
    s.create_link("demo", "unused", now + 60_000).await.unwrap();
    assert_eq!(s.revoke_tenant("demo").await.unwrap(), 2);
    assert_eq!(s.session("s2").await.unwrap(), None);
    assert_eq!(s.session("s3").await.unwrap(), None);
    assert_eq!(
        s.session("s4").await.unwrap().map(|x| x.tenant_id),
        Some("other".into())
    );
    assert_eq!(s.redeem_link("unused", now).await.unwrap(), None);
    assert_eq!(s.revoke_tenant("demo").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_incident_lists_examine_at_most_max_examined_newest_first() {
    use causeflow_shared::model::{IncidentStatus, Provider, Severity};
    use causeflow_shared::ports::{IncidentQuery, IncidentStore, MAX_EXAMINED};
    let stack = Stack::create().await;
    let store = Arc::new(causeflow_shared::aws::DynamoIncidents::new(
        stack.ddb.clone(),
        &stack.refs["IncidentsTable"],
    ));
    // Ids sort by age, newest highest. The two newest and the two oldest match the text; the
    // third newest is from Datadog and the fourth critical.
    let total = MAX_EXAMINED + 5;
    let id = |i: usize| format!("inc_{i:05}");
    let incident = move |i: usize| {
        let needle = i < 2 || i >= total - 2;
        let mut inc = stored_incident(
            "demo",
            &id(i),
            if needle { "Disk NEEDLE full" } else { "hay" },
        );
        if i == total - 3 {
            inc.provider = Provider::Datadog;
        }
        if i == total - 4 {
            inc.severity = Severity::Critical;
        }
        inc
    };
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = tokio::task::JoinSet::new();
    // A few writers at once: enough to be quick, not so many that the emulator (one process
    // shared by the parallel tests) slows to a crawl.
    for _ in 0..4 {
        let (store, next) = (store.clone(), next.clone());
        writers.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= total {
                    return;
                }
                store.open(incident(i)).await.unwrap();
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let list = |q: IncidentQuery| {
        let store = store.clone();
        async move {
            let page = store.list("demo", &q).await.unwrap();
            let ids: Vec<String> = page
                .incidents
                .iter()
                .map(|i| i.incident_id.clone())
                .collect();
            (ids, page.next_cursor)
        }
    };
    let text = |limit: usize, cursor: Option<String>| IncidentQuery {
        text: Some("needle".into()),
        limit,
        cursor,
        ..Default::default()
    };

    // Unfiltered: unchanged, one past the limit says there is more.
    let (ids, cursor) = list(IncidentQuery {
        limit: 3,
        ..Default::default()
    })
    .await;
    assert_eq!(ids, [id(total - 1), id(total - 2), id(total - 3)]);
    assert_eq!(cursor, Some(id(total - 3)));

    // The two newest match; the search stops after MAX_EXAMINED and says where it got to.
    let (ids, cursor) = list(text(2, None)).await;
    assert_eq!(ids, [id(total - 1), id(total - 2)]);
    assert_eq!(cursor, Some(id(total - MAX_EXAMINED)));
    // ... and going on from there finds the oldest two, and the end.
    let (ids, cursor) = list(text(2, cursor)).await;
    assert_eq!(ids, [id(1), id(0)]);
    assert_eq!(cursor, None);
    // A page that fills stops at once, its cursor on its last match.
    let (ids, cursor) = list(text(1, None)).await;
    assert_eq!((ids, cursor), (vec![id(total - 1)], Some(id(total - 1))));

    let (ids, cursor) = list(IncidentQuery {
        provider: Some(Provider::Datadog),
        limit: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(
        (ids, cursor.clone()),
        (vec![id(total - 3)], Some(id(total - MAX_EXAMINED)))
    );
    let (ids, cursor) = list(IncidentQuery {
        provider: Some(Provider::Datadog),
        limit: 10,
        cursor,
        ..Default::default()
    })
    .await;
    assert!(ids.is_empty() && cursor.is_none());
    let (ids, _) = list(IncidentQuery {
        severity: Some(Severity::Critical),
        limit: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(ids, [id(total - 4)]);

    // Status comes from the index, the text filter on top of it.
    let mut resolved = incident(total - 1);
    resolved.status = IncidentStatus::Resolved;
    resolved.resolved_at = Some("2026-01-01T01:00:00.000Z".into());
    store.resolve(resolved).await.unwrap();
    let (ids, cursor) = list(IncidentQuery {
        status: Some(IncidentStatus::Resolved),
        ..text(10, None)
    })
    .await;
    assert_eq!((ids, cursor), (vec![id(total - 1)], None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_log_reads_the_dispatch_markers_of_an_incidents_agents() {
    use causeflow_shared::aws::{DynamoIncidents, DynamoTaskLog, SnsDispatcher};
    use causeflow_shared::model::{IncidentStatus, TaskKind};
    use causeflow_shared::ports::{Dispatcher, IncidentStore, TaskLog};
    use causeflow_shared::triage::{task, task_id};
    let stack = Stack::create().await;
    let config = stack.triage_config();
    let incidents = DynamoIncidents::new(stack.ddb.clone(), &config.incidents_table);
    let log = DynamoTaskLog::new(
        stack.ddb.clone(),
        &config.incidents_table,
        &config.dispatch_table,
    );
    let dispatcher = SnsDispatcher::new(
        stack.ddb.clone(),
        stack.sns.clone(),
        &config.dispatch_table,
        &config.agent_topic_arn,
    );
    assert!(log.tasks("demo", "inc_unknown").await.unwrap().is_empty());

    let mut inc = stored_incident("demo", "inc_tasks", "x");
    inc.agents = vec!["logs".into(), "metrics".into()];
    incidents.open(inc.clone()).await.unwrap();
    // Logs' task is published; metrics' publish is still in progress.
    dispatcher
        .dispatch(&task(&inc, "logs", TaskKind::Dispatch, "now"))
        .await
        .unwrap();
    stack
        .ddb
        .put_item()
        .table_name(&config.dispatch_table)
        .item(
            "taskId",
            AttributeValue::S(task_id("inc_tasks", "metrics", TaskKind::Dispatch)),
        )
        .item("state", AttributeValue::S("publishing".into()))
        .send()
        .await
        .unwrap();
    let summary = |tasks: Vec<causeflow_shared::ports::TaskRecord>| {
        tasks
            .into_iter()
            .map(|t| {
                assert_eq!((t.attempts, t.at.as_deref()), (None, None));
                (t.task_id, t.agent, t.kind, t.state)
            })
            .collect::<Vec<_>>()
    };
    let row = |agent: &str, kind: TaskKind, state: &str| {
        (
            task_id("inc_tasks", agent, kind),
            agent.to_owned(),
            match kind {
                TaskKind::Dispatch => "investigate".to_owned(),
                TaskKind::Cancel => "cancel".to_owned(),
            },
            state.to_owned(),
        )
    };
    assert_eq!(
        summary(log.tasks("demo", "inc_tasks").await.unwrap()),
        [
            row("logs", TaskKind::Dispatch, "published"),
            row("metrics", TaskKind::Dispatch, "pending"),
        ]
    );

    // Once resolved, the cancels follow the investigations.
    let mut resolved = inc.clone();
    resolved.status = IncidentStatus::Resolved;
    resolved.resolved_at = Some("2026-01-01T01:00:00.000Z".into());
    incidents.resolve(resolved).await.unwrap();
    dispatcher
        .dispatch(&task(&inc, "metrics", TaskKind::Cancel, "now"))
        .await
        .unwrap();
    assert_eq!(
        summary(log.tasks("demo", "inc_tasks").await.unwrap()),
        [
            row("logs", TaskKind::Dispatch, "published"),
            row("metrics", TaskKind::Dispatch, "pending"),
            row("logs", TaskKind::Cancel, "pending"),
            row("metrics", TaskKind::Cancel, "published"),
        ]
    );
    // Another tenant's incident of that id does not exist.
    assert!(log.tasks("other", "inc_tasks").await.unwrap().is_empty());
}

/// An incident store whose first `open` of some incidents fails, as a store hiccup would: triage
/// fails those messages, and SQS redelivers them.
struct FailFirstOpen {
    inner: Arc<dyn causeflow_shared::ports::IncidentStore>,
    failed: std::sync::Mutex<std::collections::HashSet<String>>,
}

#[async_trait::async_trait]
impl causeflow_shared::ports::IncidentStore for FailFirstOpen {
    async fn open(
        &self,
        i: causeflow_shared::model::Incident,
    ) -> Result<causeflow_shared::model::Incident, causeflow_shared::error::StoreError> {
        let first = i.incident_id.bytes().map(u32::from).sum::<u32>() % 3 == 0
            && self.failed.lock().unwrap().insert(i.incident_id.clone());
        if first {
            return Err(causeflow_shared::error::StoreError::Unavailable(
                "injected".into(),
            ));
        }
        self.inner.open(i).await
    }
    async fn resolve(
        &self,
        i: causeflow_shared::model::Incident,
    ) -> Result<causeflow_shared::model::Incident, causeflow_shared::error::StoreError> {
        self.inner.resolve(i).await
    }
    async fn acknowledge(
        &self,
        t: &str,
        i: &str,
        at: &str,
    ) -> Result<Option<causeflow_shared::model::Incident>, causeflow_shared::error::StoreError>
    {
        self.inner.acknowledge(t, i, at).await
    }
    async fn get(
        &self,
        t: &str,
        i: &str,
    ) -> Result<Option<causeflow_shared::model::Incident>, causeflow_shared::error::StoreError>
    {
        self.inner.get(t, i).await
    }
    async fn list(
        &self,
        t: &str,
        q: &causeflow_shared::ports::IncidentQuery,
    ) -> Result<causeflow_shared::ports::IncidentPage, causeflow_shared::error::StoreError> {
        self.inner.list(t, q).await
    }
}

/// Crashes under load on the AWS adapters: 32 concurrent senders; a third of the alerts first
/// reach an ingest invocation that dies between its conditional put and its SQS send, and are
/// retried (503 while the lease is live, then taken over); duplicates are sent again; a third of
/// the firings fail triage once and are redelivered. Afterwards every 202 `created` is one
/// incident, every 409 names one, and no key has two open incidents.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashes_under_load_on_the_aws_adapters_lose_nothing() {
    use causeflow_shared::error::StoreError;
    use causeflow_shared::model::{Outcome, Provider};
    use causeflow_shared::ports::{AlertLedger, IncidentQuery, IncidentStore};
    let stack = Stack::create().await;
    let _ = stack.ingest().await;
    let (dying, _) = ledger_and_router(&stack, &CallCounter::default());
    dying
        .crash_after_claim()
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (ledger, _) = ledger_and_router(&stack, &CallCounter::default());
    let t0 = chrono::Utc::now();
    let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for task in 0..32 {
        let (dying, ledger, answers) = (dying.clone(), ledger.clone(), answers.clone());
        tasks.push(tokio::spawn(async move {
            for k in 0..6 {
                let id = format!("load-{task}-{k}");
                let alert = [generic_alert(&id)];
                let mut at = t0;
                if k % 4 == 0 {
                    // The first invocation dies after its put: the sender gets no answer.
                    assert!(dying
                        .admit("demo", Provider::Generic, &alert, at)
                        .await
                        .is_err());
                }
                // The sender retries until answered; the 503 lasts as long as the lease.
                let r = loop {
                    match ledger.admit("demo", Provider::Generic, &alert, at).await {
                        Err(StoreError::InFlight { retry_after }) => {
                            at += chrono::Duration::from_std(retry_after).unwrap()
                                + chrono::Duration::milliseconds(1);
                        }
                        other => break other.unwrap(),
                    }
                };
                answers.lock().unwrap().push(r[0].clone());
                // And sends it again: a duplicate of the open incident.
                let again = ledger
                    .admit("demo", Provider::Generic, &alert, at)
                    .await
                    .unwrap();
                answers.lock().unwrap().push(again[0].clone());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Triage with redelivery: failed messages come back (visibility set to 0, as the timeout
    // would) until the queue is empty.
    let base = stack.triage();
    let triage = causeflow_shared::triage::Triage {
        incidents: Arc::new(FailFirstOpen {
            inner: base.incidents.clone(),
            failed: Default::default(),
        }),
        ..base
    };
    let url = stack.refs["AlertQueue"].clone();
    let mut redelivered = 0;
    for round in 0.. {
        assert!(round < 200, "the queue never drained");
        let msgs = stack.receive(&url).await;
        if msgs.is_empty() {
            break;
        }
        let event = sqs_event(
            msgs.iter()
                .map(|m| (m.message_id.clone().unwrap(), m.body.clone().unwrap())),
        );
        let resp = ::triage::handle(event, &triage).await;
        let bad: Vec<String> = resp
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect();
        for m in msgs {
            let handle = m.receipt_handle.unwrap();
            if bad.contains(m.message_id.as_ref().unwrap()) {
                redelivered += 1;
                stack
                    .sqs
                    .change_message_visibility()
                    .queue_url(&url)
                    .receipt_handle(handle)
                    .visibility_timeout(0)
                    .send()
                    .await
                    .unwrap();
            } else {
                stack
                    .sqs
                    .delete_message()
                    .queue_url(&url)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .unwrap();
            }
        }
    }
    let answers = answers.lock().unwrap().clone();
    let store = causeflow_shared::aws::DynamoIncidents::new(
        stack.ddb.clone(),
        &stack.refs["IncidentsTable"],
    );
    let mut open = BTreeMap::<String, usize>::new();
    let mut cursor = None;
    loop {
        let page = store
            .list(
                "demo",
                &IncidentQuery {
                    limit: 200,
                    cursor: cursor.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        for i in &page.incidents {
            if i.status.is_active() {
                *open.entry(i.source_alert_id.clone()).or_default() += 1;
            }
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let (mut created, mut duplicates) = (0, 0);
    for a in &answers {
        let id = a.incident_id.as_deref().unwrap();
        match a.outcome {
            Outcome::Created => created += 1,
            Outcome::Duplicate => duplicates += 1,
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            store.get("demo", id).await.unwrap().is_some(),
            "{a:?} has no incident"
        );
    }
    assert_eq!(created, 192, "each alert opened one incident");
    assert_eq!(duplicates, 192);
    assert!(open.values().all(|n| *n == 1), "{open:?}");
    assert_eq!(open.len(), 192);
    assert!(redelivered > 0, "no redelivery was exercised");
    let crashed = 32 * (0..6).filter(|k| k % 4 == 0).count();
    println!(
        "aws chaos: 192 alerts, {crashed} crashed after their put and taken over, {duplicates} duplicates, {redelivered} redeliveries, lost 0"
    );
}

/// A loopback proxy in front of the emulator that records each AWS operation it forwards, so a
/// whole path (router, ledger, triage, dispatcher) is counted without touching its clients.
struct CallLog {
    url: String,
    ops: Arc<std::sync::Mutex<BTreeMap<String, usize>>>,
}

impl CallLog {
    async fn start() -> CallLog {
        let upstream = endpoint();
        let ops: Arc<std::sync::Mutex<BTreeMap<String, usize>>> = Arc::default();
        let client = reqwest::Client::new();
        let log = ops.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (client, log, upstream) = (client.clone(), log.clone(), upstream.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = http_body_util::BodyExt::collect(body)
                    .await
                    .unwrap()
                    .to_bytes();
                let op = match parts.headers.get("x-amz-target") {
                    // DynamoDB_20120810.PutItem, AmazonSQS.SendMessage
                    Some(t) => {
                        let t = t.to_str().unwrap();
                        let (service, name) = t.split_once('.').unwrap();
                        let service = if service.starts_with("DynamoDB") {
                            "DynamoDB"
                        } else {
                            "SQS"
                        };
                        format!("{service} {name}")
                    }
                    // The query protocol (SNS): Action=Publish&...
                    None => format!(
                        "SNS {}",
                        url::form_urlencoded::parse(&body)
                            .find(|(k, _)| k == "Action")
                            .map(|(_, v)| v.into_owned())
                            .unwrap_or_default()
                    ),
                };
                *log.lock().unwrap().entry(op).or_default() += 1;
                let mut fwd = client.request(
                    parts.method.clone(),
                    format!("{upstream}{}", parts.uri.path_and_query().unwrap()),
                );
                for (k, v) in &parts.headers {
                    if k != "host" && k != "content-length" {
                        fwd = fwd.header(k, v);
                    }
                }
                let resp = fwd.body(body).send().await.unwrap();
                let mut answer = http::Response::builder().status(resp.status());
                for (k, v) in resp.headers() {
                    if k != "transfer-encoding" && k != "content-length" && k != "connection" {
                        answer = answer.header(k, v);
                    }
                }
                answer
                    .body(axum::body::Body::from(resp.bytes().await.unwrap()))
                    .unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        CallLog { url, ops }
    }

    /// An SDK configuration whose calls go through the proxy.
    async fn sdk(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.url)
            .load()
            .await
    }

    fn take(&self) -> BTreeMap<String, usize> {
        std::mem::take(&mut self.ops.lock().unwrap())
    }
}

/// Per alert: each operation's count divided by the alerts, as "N" or "N/d".
fn per_alert(ops: &BTreeMap<String, usize>, alerts: usize) -> BTreeMap<String, String> {
    ops.iter()
        .map(|(k, &n)| {
            let v = if n % alerts == 0 {
                format!("{}", n / alerts)
            } else {
                format!("{n}/{alerts}")
            };
            (k.clone(), v)
        })
        .collect()
}

/// What one alert costs in AWS calls, counted at the wire through the real ingest router,
/// triage handler and dispatcher, for the cost table in README.md (docs/operations.md#cost).
/// The counts are exact and asserted, so the table cannot silently go stale; the handler times
/// against the emulator are printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_calls_per_alert_are_counted() {
    let stack = Stack::create().await;
    stack.store_dev_key().await;
    let log = CallLog::start().await;
    let sdk = log.sdk().await;
    // A key's last use is written at most once a minute (one UpdateItem per key per minute,
    // nothing per alert): left out, so the counts do not depend on this machine's speed.
    let mut state = ingest_state(&sdk, &stack.ingest_config());
    std::sync::Arc::get_mut(&mut state).unwrap().usage = None;
    let app = router(state);
    let triage = triage(&sdk, &stack.triage_config());
    let n = 10;
    let alert = |i: usize, status: &str| {
        json!({"sourceAlertId": format!("cost-{i}"), "title": "checkout 5xx", "status": status,
               "severity": "high", "service": "checkout"})
    };
    // A first alert, uncounted, so every table and queue has been touched once.
    let (status, _) = generic(&app, &alert(n, "firing")).await;
    assert_eq!(status, 202);
    stack.run_triage(&triage).await;
    log.take();
    let started = std::time::Instant::now();
    for i in 0..n {
        let (status, body) = generic(&app, &alert(i, "firing")).await;
        assert_eq!(status, 202, "{body}");
    }
    let ingest_firing = log.take();
    let ingest_ms = started.elapsed().as_secs_f64() * 1000.0 / n as f64;
    for i in 0..n {
        let (status, _) = generic(&app, &alert(i, "firing")).await;
        assert_eq!(status, 409);
    }
    let ingest_duplicate = log.take();
    // Triage reads a tenant's agent table at most once in 10 s per function: read it now,
    // uncounted, so the count below does not depend on how fast this machine is.
    triage.settings.agent_overrides("demo").await.unwrap();
    log.take();
    let started = std::time::Instant::now();
    assert!(stack.run_triage(&triage).await.is_empty());
    let triage_ms = started.elapsed().as_secs_f64() * 1000.0 / n as f64;
    let triage_firing = log.take();
    for i in 0..n {
        let (status, _) = generic(&app, &alert(i, "resolved")).await;
        assert_eq!(status, 202);
    }
    let ingest_resolve = log.take();
    assert!(stack.run_triage(&triage).await.is_empty());
    let triage_resolve = log.take();

    let table = [
        ("ingest, a new firing alert", per_alert(&ingest_firing, n)),
        ("ingest, a duplicate (409)", per_alert(&ingest_duplicate, n)),
        (
            "triage, a firing alert (3 agents)",
            per_alert(&triage_firing, n),
        ),
        ("ingest, a resolve", per_alert(&ingest_resolve, n)),
        (
            "triage, a resolve (3 cancels)",
            per_alert(&triage_resolve, n),
        ),
    ];
    for (what, calls) in &table {
        eprintln!("AWS calls per alert, {what}: {calls:?}");
    }
    eprintln!(
        "handler time against the emulator on loopback: ingest {ingest_ms:.1} ms per request, \
         triage {triage_ms:.1} ms per alert (in batches of up to 10)"
    );
    let expect = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    // Keep README.md#what-a-million-alerts-cost-on-aws in step with these.
    let ingest_common = [("DynamoDB BatchGetItem", "1"), ("DynamoDB GetItem", "1")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut all = ingest_common.to_vec();
        all.extend_from_slice(extra);
        expect(&all)
    };
    assert_eq!(
        table[0].1,
        with(&[
            ("DynamoDB PutItem", "1"),
            ("DynamoDB UpdateItem", "1"),
            ("SQS SendMessageBatch", "1"),
        ]),
        "ingest, firing"
    );
    assert_eq!(
        table[1].1,
        with(&[("DynamoDB UpdateItem", "1")]),
        "ingest, duplicate"
    );
    let tasks = [
        ("DynamoDB PutItem", "4"),
        ("DynamoDB UpdateItem", "3"),
        ("SNS Publish", "3"),
    ];
    let mut firing = tasks.to_vec();
    firing.push(("DynamoDB GetItem", "1"));
    assert_eq!(table[2].1, expect(&firing), "triage, firing");
    assert_eq!(
        table[3].1,
        with(&[("DynamoDB DeleteItem", "1"), ("SQS SendMessageBatch", "1")]),
        "ingest, resolve"
    );
    let mut resolve = firing.clone();
    resolve.push(("DynamoDB DeleteItem", "1"));
    assert_eq!(table[4].1, expect(&resolve), "triage, resolve");
}
