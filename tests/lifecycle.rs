//! docs/contract.md#the-alert-lifecycle: the dedup lifecycle, concurrency, dispatch and cancel, and
//! faults behind the ports answering 503 without leaving anything behind.

mod common;

use std::time::Duration;

use causeflow_shared::host::embedded::{Embedded, EmbeddedConfig};
use causeflow_shared::model::IncidentStatus;
use causeflow_shared::ports::IncidentStore;
use causeflow_shared::ports::KeyAdmin;
use causeflow_shared::triage::Triage;
use common::Server;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firing_duplicate_resolve_and_firing_again() {
    let s = Server::start().await;
    let first = s.generic("cpu", "firing").await;
    first.expect(202);
    assert_eq!(first.outcome(), "created");
    let id = first.incident_id();

    let dup = s.generic("cpu", "firing").await;
    dup.expect(409);
    assert_eq!(dup.code(), "duplicate");
    assert_eq!(dup.json["incidentIds"], json!([id]));
    assert_eq!(dup.outcome(), "duplicate");

    let resolved = s.generic("cpu", "resolved").await;
    resolved.expect(202);
    assert_eq!(
        (resolved.outcome(), resolved.incident_id()),
        ("resolved", id.clone())
    );
    let inc = s
        .wait_incident(&id, |i| i.status == IncidentStatus::Resolved)
        .await;
    assert!(inc.resolved_at.is_some());

    let again = s.generic("cpu", "firing").await;
    again.expect(202);
    assert_eq!(again.outcome(), "created");
    assert_ne!(again.incident_id(), id, "a new incident after the resolve");

    let nothing = s.generic("never-fired", "resolved").await;
    nothing.expect(202);
    assert_eq!(nothing.outcome(), "ignored");
    assert!(nothing.json["alerts"][0].get("incidentId").is_none());

    // Dispatch on open, cancel on resolve, one task per agent each.
    let rows = s.app.dispatcher.for_incident("acme", &id).await.unwrap();
    let kinds: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.kind.as_str(), r.agent.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("dispatch", "logs"),
            ("dispatch", "metrics"),
            ("dispatch", "deploys"),
            ("cancel", "logs"),
            ("cancel", "metrics"),
            ("cancel", "deploys")
        ]
    );
    let task: serde_json::Value = serde_json::from_str(&rows[0].body).unwrap();
    for f in [
        "taskId",
        "incidentId",
        "tenantId",
        "agent",
        "severity",
        "summary",
        "dispatchedAt",
    ] {
        assert!(task.get(f).is_some(), "task lacks {f}: {task}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_identical_requests_at_once_give_exactly_one_202() {
    let s = std::sync::Arc::new(Server::start().await);
    let body =
        json!({"sourceAlertId": "storm", "title": "alert storm", "status": "firing"}).to_string();
    let mut handles = Vec::new();
    for _ in 0..50 {
        let s = s.clone();
        let body = body.clone();
        handles.push(tokio::spawn(async move {
            s.post("generic", body.as_bytes(), true, &[]).await
        }));
    }
    let mut created = Vec::new();
    let mut dup_ids = std::collections::HashSet::new();
    for h in handles {
        let r = h.await.unwrap();
        match r.status {
            202 => created.push(r.incident_id()),
            409 => {
                dup_ids.insert(r.incident_id());
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert_eq!(created.len(), 1);
    assert_eq!(dup_ids.len(), 1);
    assert!(
        dup_ids.contains(&created[0]),
        "every 409 names the one incident"
    );
    s.wait_incident(&created[0], |_| true).await;
    assert_eq!(s.dedup_rows().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_multi_alert_notification_counts_each_alert() {
    let s = Server::start().await;
    let alert = |fp: &str, status: &str| json!({"status": status, "fingerprint": fp, "labels": {"alertname": fp}});
    let body =
        |alerts: Vec<serde_json::Value>| json!({"status": "firing", "alerts": alerts}).to_string();
    let r = s
        .post(
            "grafana",
            body(vec![alert("a", "firing"), alert("b", "firing")]).as_bytes(),
            true,
            &[],
        )
        .await;
    r.expect(202);
    // A repeat notification where one alert resolved: 202 with one resolve and one duplicate.
    let r = s
        .post(
            "grafana",
            body(vec![alert("a", "resolved"), alert("b", "firing")]).as_bytes(),
            true,
            &[],
        )
        .await;
    r.expect(202);
    assert_eq!(r.outcomes(), ["resolved", "duplicate"]);
    // Only duplicates left: 409.
    let r = s
        .post(
            "grafana",
            body(vec![alert("b", "firing")]).as_bytes(),
            true,
            &[],
        )
        .await;
    r.expect(409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_dedup_records_release_the_key() {
    let s = Server::start_with(|c| c.dedup.ttl = Duration::from_millis(300)).await;
    let first = s.generic("flappy", "firing").await;
    first.expect(202);
    s.generic("flappy", "firing").await.expect(409);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = s.generic("flappy", "firing").await;
    again.expect(202);
    assert_ne!(again.incident_id(), first.incident_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_agent_overrides_and_test_alerts() {
    let s = Server::start().await;
    let mut o = causeflow_shared::policy::AgentOverrides::default();
    o.0.insert(
        causeflow_shared::model::Severity::High,
        vec!["oncall-bot".into()],
    );
    s.app
        .directory
        .set_agent_overrides("acme", &o)
        .await
        .unwrap();
    let r = s.generic("ov", "firing").await;
    let inc = s.wait_incident(&r.incident_id(), |_| true).await;
    assert_eq!(inc.agents, ["oncall-bot"]);

    let body = json!({"sourceAlertId": "t1", "title": "test from the tool", "severity": "critical", "test": true}).to_string();
    let r = s.post("generic", body.as_bytes(), true, &[]).await;
    r.expect(202);
    let inc = s.wait_incident(&r.incident_id(), |_| true).await;
    assert!(inc.test && inc.agents.is_empty());
    assert!(s
        .app
        .dispatcher
        .for_incident("acme", &inc.incident_id)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_answers_503_and_records_nothing() {
    let s = Server::start().await;
    s.app.db.faults().set(true);
    let r = s.generic("f1", "firing").await;
    r.expect(503);
    assert_eq!(r.code(), "unavailable");
    assert!(r.header("retry-after").parse::<u64>().unwrap() >= 1);
    s.app.db.faults().set(false);
    assert_eq!(s.dedup_rows().await, 0);
    // The sender's retry succeeds.
    s.generic("f1", "firing").await.expect(202);
}

/// Makes triage fail for alerts whose incident's JSON is `LIKE` the pattern: its insert aborts.
fn triage_down(like: &str) -> String {
    format!(
        "CREATE TRIGGER triage_down BEFORE INSERT ON incidents WHEN NEW.data LIKE '{like}'
         BEGIN SELECT RAISE(ABORT, 'triage unavailable'); END;"
    )
}

/// The most receives of a queued message whose body mentions `text`; `None` if none is queued.
async fn receives(app: &Embedded, text: &str) -> Option<i64> {
    let like = format!("%{text}%");
    app.db
        .read(move |c| {
            Ok(c.query_row(
                "SELECT max(receive_count) FROM queue WHERE body LIKE ?1",
                [like],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap()
}

/// Puts `body` on the embedded queue, visible now, as received `receives` times already.
async fn enqueue(app: &Embedded, body: &str, receives: i64) {
    let body = body.to_owned();
    app.db
        .write(move |c| {
            c.execute(
                "INSERT INTO queue(body, enqueued_at, visible_at, receive_count) VALUES (?1, 0, 0, ?2)",
                rusqlite::params![body, receives],
            )?;
            Ok(())
        })
        .await
        .unwrap();
}

/// Triages what is visible on the embedded queue with `triage`, in one batch, as the triage
/// loop does; how many messages it took.
async fn triage_queued(app: &Embedded, triage: Triage) -> usize {
    app.queue
        .triage_batch(triage, 64, 30_000, 60_000)
        .await
        .unwrap()
}

/// `serve` triages an alert in the transaction that admits it: the 202 is sent with its
/// incident and agent tasks already on disk, and the queue never holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_triaged_before_their_202() {
    let s = Server::start().await;
    let r = s.generic("at-once", "firing").await;
    r.expect(202);
    let id = r.incident_id();
    // No waiting: read at once.
    let incident = s.app.incidents.get("acme", &id).await.unwrap();
    let incident = incident.expect("the incident is recorded before the 202");
    assert_eq!(incident.agents, ["logs", "metrics", "deploys"]);
    let (tasks, queued): (i64, i64) = s
        .app
        .db
        .read(move |c| {
            Ok((
                c.query_row(
                    "SELECT count(*) FROM dispatches WHERE incident_id = ?1",
                    [&id],
                    |r| r.get(0),
                )?,
                c.query_row("SELECT count(*) FROM queue", [], |r| r.get(0))?,
            ))
        })
        .await
        .unwrap();
    assert_eq!((tasks, queued), (3, 0));
    // A resolve too: its incident is resolved when its 202 arrives.
    s.generic("at-once", "resolved").await.expect(202);
    let incident = s.app.incidents.get("acme", &r.incident_id()).await.unwrap();
    assert_eq!(incident.unwrap().status, IncidentStatus::Resolved);
}

/// When triage fails where alerts are admitted, the failing alert and those admitted after it
/// are queued in the same commit, and all are answered 202; the ones before it are triaged.
/// While anything is queued, new alerts queue behind it. The triage loop retries until every
/// alert goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_triage_fails_at_admission_is_queued_and_retried() {
    let s = Server::start_with(|c| c.retry_base = Duration::from_millis(20)).await;
    s.app
        .db
        .write(|c| Ok(c.execute_batch(&triage_down("%boom%"))?))
        .await
        .unwrap();
    let alert =
        |fp: &str| json!({"status": "firing", "fingerprint": fp, "labels": {"alertname": fp}});
    let body = json!({"status": "firing", "alerts": [alert("ok-1"), alert("boom"), alert("ok-2")]});
    let r = s
        .post("grafana", body.to_string().as_bytes(), true, &[])
        .await;
    r.expect(202);
    assert_eq!(r.outcomes(), ["created", "created", "created"]);
    let ids: Vec<String> = (0..3)
        .map(|i| {
            r.json["alerts"][i]["incidentId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let recorded = |n: usize| s.app.incidents.get("acme", &ids[n]);
    assert!(recorded(0).await.unwrap().is_some(), "triaged at admission");
    assert!(recorded(1).await.unwrap().is_none());
    // The failing alert is retried, its receives counted.
    common::eventually("the queued alert retried", || async {
        receives(&s.app, "boom").await.filter(|n| *n >= 2)
    })
    .await;
    // The one admitted after it, and a new one sent meanwhile, go through the queue.
    s.wait_incident(&ids[2], |_| true).await;
    let fine = s.generic("fine", "firing").await;
    fine.expect(202);
    s.wait_incident(&fine.incident_id(), |_| true).await;
    // Once triage works again, the failing alert's incident is recorded too.
    s.app
        .db
        .write(|c| Ok(c.execute_batch("DROP TRIGGER triage_down")?))
        .await
        .unwrap();
    let incident = s.wait_incident(&ids[1], |_| true).await;
    assert_eq!(incident.source_alert_id, "boom");
}

/// While anything is queued, alerts admitted meanwhile are queued behind it instead of triaged
/// ahead of it; once the queue is empty, they are triaged at admission again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_admitted_while_others_are_queued_wait_behind_them() {
    use causeflow_shared::model::{Alert, Provider};
    let app = Embedded::open(EmbeddedConfig::new(common::tempdir().join("c.db"))).unwrap();
    app.directory.create_key("acme", "test").await.unwrap();
    // Not running: nothing but this test triages the queue, so what is queued stays there.
    app.queue.triage_at_admission(app.triage.clone());
    let admit = |id: &str| {
        let alert: Alert = serde_json::from_value(
            json!({"sourceAlertId": id, "status": "firing", "title": id, "severity": "high"}),
        )
        .unwrap();
        let ledger = app.state.ledger.clone();
        async move {
            let results = ledger
                .admit("acme", Provider::Generic, &[alert], chrono::Utc::now())
                .await
                .unwrap();
            results[0].incident_id.clone().unwrap()
        }
    };
    let queued = || async {
        app.db
            .read(|c| Ok(c.query_row("SELECT count(*) FROM queue", [], |r| r.get::<_, i64>(0))?))
            .await
            .unwrap()
    };

    enqueue(&app, "already queued", 0).await;
    let behind = admit("behind").await;
    assert!(app.incidents.get("acme", &behind).await.unwrap().is_none());
    assert_eq!(queued().await, 2, "queued behind the message already there");

    // The queue emptied (the first message dropped, the second triaged by the loop's code):
    // the next alert is triaged at admission.
    app.db
        .write(|c| Ok(c.execute("DELETE FROM queue WHERE body = 'already queued'", [])?))
        .await
        .unwrap();
    assert_eq!(triage_queued(&app, app.triage.clone()).await, 1);
    assert!(app.incidents.get("acme", &behind).await.unwrap().is_some());
    let ahead = admit("ahead").await;
    assert!(app.incidents.get("acme", &ahead).await.unwrap().is_some());
    assert_eq!(queued().await, 0);
    app.queue.queue_at_admission();
    app.db.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_queue_rolls_back_the_dedup_record() {
    let s = Server::start().await;
    // Triage fails where the alert is admitted, and so does queueing it instead, after the
    // dedup record was written in the same transaction.
    s.app
        .db
        .write(|c| Ok(c.execute_batch(&triage_down("%"))?))
        .await
        .unwrap();
    s.app
        .db
        .write(|c| {
            Ok(c.execute_batch(
                "CREATE TRIGGER queue_down BEFORE INSERT ON queue BEGIN SELECT RAISE(ABORT, 'queue unavailable'); END;",
            )?)
        })
        .await
        .unwrap();
    let r = s.generic("q1", "firing").await;
    r.expect(503);
    assert_eq!(s.dedup_rows().await, 0, "no dedup record left behind");
    // A resolve of an open alert fails the same way, and its dedup key stays.
    s.app
        .db
        .write(|c| Ok(c.execute_batch("DROP TRIGGER queue_down")?))
        .await
        .unwrap();
    let open = s.generic("q2", "firing").await;
    open.expect(202);
    s.app
        .db
        .write(|c| {
            Ok(c.execute_batch(
                "CREATE TRIGGER queue_down BEFORE INSERT ON queue BEGIN SELECT RAISE(ABORT, 'queue unavailable'); END;",
            )?)
        })
        .await
        .unwrap();
    s.generic("q2", "resolved").await.expect(503);
    assert_eq!(
        s.dedup_rows().await,
        1,
        "the open incident still holds its key"
    );
    s.app
        .db
        .write(|c| Ok(c.execute_batch("DROP TRIGGER queue_down")?))
        .await
        .unwrap();
    s.generic("q1", "firing").await.expect(202);
    let r = s.generic("q2", "resolved").await;
    r.expect(202);
    assert_eq!(r.outcome(), "resolved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_fail_alone_and_dead_letter_after_five_receives() {
    use causeflow_shared::triage::QueueRecord;
    let s = Server::start_with(|c| c.retry_base = Duration::from_millis(20)).await;
    let good = serde_json::json!({"tenantId":"acme","provider":"generic","incidentId":"inc_x","receivedAt":"2026-11-28T00:00:00Z",
        "alert":{"sourceAlertId":"x","status":"firing","title":"t","severity":"low","tags":{},"links":[]}});
    let failed = s
        .app
        .triage
        .handle_batch(vec![
            QueueRecord {
                id: "1".into(),
                body: "{not json".into(),
                receive_count: 1,
            },
            QueueRecord {
                id: "2".into(),
                body: good.to_string(),
                receive_count: 1,
            },
            QueueRecord {
                id: "3".into(),
                body: "{\"tenantId\": 5}".into(),
                receive_count: 1,
            },
        ])
        .await;
    let mut failed = failed;
    failed.sort();
    assert_eq!(failed, ["1", "3"]);
    assert!(s
        .app
        .incidents
        .get("acme", "inc_x")
        .await
        .unwrap()
        .is_some());

    // Through the embedded queue: a poison body is retried, then dead-lettered.
    enqueue(&s.app, "poison", 0).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stats = s.app.queue.stats().await.unwrap();
        if stats.dead_letters == 1 && stats.queued == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "poison not dead-lettered: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let receives: i64 = s
        .app
        .db
        .read(|c| Ok(c.query_row("SELECT receive_count FROM dead_letters", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(receives, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_tasks_are_posted_to_the_agent_webhook_with_retries() {
    use axum::routing::post;
    use std::sync::{Arc, Mutex};
    let received: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = {
        let received = received.clone();
        let calls = calls.clone();
        axum::Router::new().route(
            "/agents",
            post(move |headers: axum::http::HeaderMap, body: String| {
                let received = received.clone();
                let calls = calls.clone();
                async move {
                    // The first delivery fails: the task must be retried, not dropped.
                    if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let agent = headers["x-causeflow-agent"].to_str().unwrap().to_owned();
                    received
                        .lock()
                        .unwrap()
                        .push((agent, serde_json::from_str(&body).unwrap()));
                    axum::http::StatusCode::OK
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/agents", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let s = Server::start_with(|c| c.agent_webhook = Some(url)).await;
    let body =
        json!({"sourceAlertId": "db", "title": "db down", "severity": "critical"}).to_string();
    let r = s.post("generic", body.as_bytes(), true, &[]).await;
    r.expect(202);
    // Wait for the state, not for time: every agent received its task and every outbox row is
    // marked delivered (the mark follows the POST, so it can lag behind what the agent saw).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let mut agents: Vec<String> = received
            .lock()
            .unwrap()
            .iter()
            .map(|(a, _)| a.clone())
            .collect();
        agents.sort();
        let rows = s
            .app
            .dispatcher
            .for_incident("acme", &r.incident_id())
            .await
            .unwrap();
        if agents == ["deploys", "infrastructure", "logs", "metrics", "traces"]
            && rows.len() == 5
            && rows.iter().all(|r| r.delivered)
        {
            break rows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agents received: {agents:?}; outbox: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let got = received.lock().unwrap().clone();
    assert!(got
        .iter()
        .all(|(_, t)| t["incidentId"] == r.incident_id().as_str()
            && t["severity"] == "critical"
            && t["kind"] == "dispatch"));
    assert_eq!(
        rows.iter().map(|r| r.attempts).sum::<i64>(),
        6,
        "one failed attempt, then five deliveries"
    );
}

/// An incident store whose writes are down, so every triage fails; reads go to the real store
/// when there is one.
struct DownIncidents(Option<std::sync::Arc<dyn IncidentStore>>);

#[async_trait::async_trait]
impl causeflow_shared::ports::IncidentStore for DownIncidents {
    async fn open(
        &self,
        _: causeflow_shared::model::Incident,
    ) -> Result<causeflow_shared::model::Incident, causeflow_shared::error::StoreError> {
        Err(causeflow_shared::error::StoreError::Unavailable(
            "down".into(),
        ))
    }
    async fn resolve(
        &self,
        i: causeflow_shared::model::Incident,
    ) -> Result<causeflow_shared::model::Incident, causeflow_shared::error::StoreError> {
        self.open(i).await
    }
    async fn acknowledge(
        &self,
        _: &str,
        _: &str,
        _: &str,
    ) -> Result<Option<causeflow_shared::model::Incident>, causeflow_shared::error::StoreError>
    {
        Err(causeflow_shared::error::StoreError::Unavailable(
            "down".into(),
        ))
    }
    async fn get(
        &self,
        tenant: &str,
        incident: &str,
    ) -> Result<Option<causeflow_shared::model::Incident>, causeflow_shared::error::StoreError>
    {
        match &self.0 {
            Some(real) => real.get(tenant, incident).await,
            None => Ok(None),
        }
    }
    async fn list(
        &self,
        _: &str,
        _: &causeflow_shared::ports::IncidentQuery,
    ) -> Result<causeflow_shared::ports::IncidentPage, causeflow_shared::error::StoreError> {
        Err(causeflow_shared::error::StoreError::Unavailable(
            "down".into(),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_that_fails_its_last_receive_releases_its_key() {
    use causeflow_shared::triage::{QueueRecord, Triage};
    let s = Server::start().await;
    // A key held by an incident that triage never managed to record.
    s.app
        .db
        .write(|c| {
            c.execute(
                "INSERT INTO dedup(tenant_id, provider, source_alert_id, incident_id, pending, lease_until, expires_at)
                 VALUES ('acme', 'generic', 'doomed', 'inc_never', 0, 0, 9999999999999)",
                [],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let message = |id: &str, incident: &str| {
        serde_json::json!({"tenantId": "acme", "provider": "generic", "incidentId": incident,
            "receivedAt": "2026-11-28T00:00:00Z",
            "alert": {"sourceAlertId": id, "status": "firing", "title": "t", "severity": "high"}})
        .to_string()
    };
    let broken = Triage {
        incidents: std::sync::Arc::new(DownIncidents(None)),
        ..s.app.triage.clone()
    };
    let record = |body: String, receive_count| QueueRecord {
        id: "1".into(),
        body,
        receive_count,
    };
    // Failing an earlier receive keeps the key: redelivery may still succeed.
    let body = message("doomed", "inc_never");
    assert_eq!(
        broken.handle_batch(vec![record(body.clone(), 4)]).await,
        ["1"]
    );
    s.generic("doomed", "firing").await.expect(409);
    // Failing the last one releases it: the next firing opens a new incident.
    assert_eq!(broken.handle_batch(vec![record(body, 5)]).await, ["1"]);
    let again = s.generic("doomed", "firing").await;
    again.expect(202);
    assert_eq!(again.outcome(), "created");
    assert_ne!(again.incident_id(), "inc_never");

    // A message whose incident was recorded (a dispatch failed after it) keeps its key, so
    // the incident's resolve still reaches it.
    let opened = s.generic("kept", "firing").await;
    opened.expect(202);
    s.wait_incident(&opened.incident_id(), |_| true).await;
    let recorded = Triage {
        incidents: std::sync::Arc::new(DownIncidents(Some(s.app.triage.incidents.clone()))),
        ..s.app.triage.clone()
    };
    let body = message("kept", &opened.incident_id());
    assert_eq!(recorded.handle_batch(vec![record(body, 5)]).await, ["1"]);
    s.generic("kept", "firing").await.expect(409);
}

/// The embedded host triages a received batch in one writer job. A record whose triage fails
/// has its writes rolled back and comes back later with its receive counted, and a firing
/// failing its last receive still gives its key up (after the rollback, so the release stands).
/// (Batch-mates that succeed: `batch_mates_of_a_failing_alert_are_triaged_and_done`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_triaged_in_one_job_fails_records_alone() {
    // Not running: nothing but this test triages its queue.
    let app = Embedded::open(EmbeddedConfig::new(common::tempdir().join("c.db"))).unwrap();
    let message = |id: &str, incident: &str| {
        serde_json::json!({"tenantId": "acme", "provider": "generic", "incidentId": incident,
            "receivedAt": "2026-11-28T00:00:00Z",
            "alert": {"sourceAlertId": id, "status": "firing", "title": "t", "severity": "high"}})
        .to_string()
    };
    let (last, early) = (
        message("doomed", "inc_doomed"),
        message("later", "inc_later"),
    );
    app.db
        .write(move |c| {
            for (id, incident) in [("doomed", "inc_doomed"), ("later", "inc_later")] {
                c.execute(
                    "INSERT INTO dedup(tenant_id, provider, source_alert_id, incident_id, pending, lease_until, expires_at)
                     VALUES ('acme', 'generic', ?1, ?2, 0, 0, 9999999999999)",
                    [id, incident],
                )?;
            }
            // `doomed` was received 4 times already: this is its last receive.
            c.execute(
                "INSERT INTO queue(body, enqueued_at, visible_at, receive_count) VALUES (?1, 0, 0, 4)",
                [&last],
            )?;
            c.execute(
                "INSERT INTO queue(body, enqueued_at, visible_at, receive_count) VALUES (?1, 0, 0, 0)",
                [&early],
            )?;
            c.execute(
                "INSERT INTO queue(body, enqueued_at, visible_at, receive_count) VALUES ('not json', 0, 0, 0)",
                [],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let broken = Triage {
        incidents: std::sync::Arc::new(DownIncidents(None)),
        ..app.triage.clone()
    };
    assert_eq!(triage_queued(&app, broken).await, 3);
    let rows = app
        .db
        .read(|c| {
            let mut st = c.prepare(
                "SELECT substr(body, 1, 8), receive_count, visible_at > 0 FROM queue ORDER BY id",
            )?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, bool>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
        .unwrap();
    // All three failed; each is back with one more receive and a backoff.
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows.iter().map(|r| r.1).collect::<Vec<_>>(), [5, 1, 1]);
    assert!(rows.iter().all(|r| r.2), "{rows:?}");
    let keys: Vec<String> = app
        .db
        .read(|c| {
            let mut st = c.prepare("SELECT source_alert_id FROM dedup ORDER BY 1")?;
            let keys = st
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(keys)
        })
        .await
        .unwrap();
    assert_eq!(
        keys,
        ["later"],
        "the last receive released its key; the earlier one kept it"
    );

    // The working triage then records `later` and deletes its row; the others wait out their
    // backoff (a minute) untouched.
    app.db
        .write(|c| {
            c.execute(
                "UPDATE queue SET visible_at = 0 WHERE body LIKE '%inc_later%'",
                [],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(triage_queued(&app, app.triage.clone()).await, 1);
    assert!(app
        .incidents
        .get("acme", "inc_later")
        .await
        .unwrap()
        .is_some());
    assert_eq!(app.queue.stats().await.unwrap().queued, 2);

    // A triage that panics after writing (the incident is recorded, then dispatching panics)
    // leaves nothing behind: the incident is rolled back, the message comes back, and the
    // writer goes on.
    let boom = message("boom", "inc_boom");
    enqueue(&app, &boom, 0).await;
    let panicking = Triage {
        dispatcher: std::sync::Arc::new(PanicDispatcher),
        ..app.triage.clone()
    };
    assert_eq!(triage_queued(&app, panicking).await, 1);
    assert!(app
        .incidents
        .get("acme", "inc_boom")
        .await
        .unwrap()
        .is_none());
    assert_eq!(app.queue.stats().await.unwrap().queued, 3);
    assert_eq!(receives(&app, "inc_boom").await, Some(1));
    app.db.write(|_| Ok(())).await.expect("the writer survived");
    app.db.close();
}

/// The fallback of a batch: one alert whose triage fails (an acknowledgement that finds no
/// incident yet) rolls back the batch's first pass, and its batch-mates are then triaged one by
/// one and done. A record that is not a queued alert fails alone before any pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_mates_of_a_failing_alert_are_triaged_and_done() {
    // Not running: nothing but this test triages its queue.
    let app = Embedded::open(EmbeddedConfig::new(common::tempdir().join("c.db"))).unwrap();
    let alert = |status: &str, incident: &str| {
        serde_json::json!({"tenantId": "acme", "provider": "generic", "incidentId": incident,
            "receivedAt": "2026-11-28T00:00:00Z",
            "alert": {"sourceAlertId": incident, "status": status, "title": "t", "severity": "high"}})
        .to_string()
    };
    let bodies = [
        alert("firing", "inc_before"),
        alert("acknowledged", "inc_never_opened"),
        "not json".to_owned(),
        alert("firing", "inc_after"),
    ];
    for body in &bodies {
        enqueue(&app, body, 0).await;
    }
    assert_eq!(triage_queued(&app, app.triage.clone()).await, 4);
    for incident in ["inc_before", "inc_after"] {
        assert!(
            app.incidents.get("acme", incident).await.unwrap().is_some(),
            "{incident}"
        );
    }
    let left: Vec<(String, i64)> = app
        .db
        .read(|c| {
            let mut st =
                c.prepare("SELECT substr(body, 1, 8), receive_count FROM queue ORDER BY id")?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
        .unwrap();
    // The two firings are done; the acknowledgement and the malformed record wait, received once.
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(left[1], ("not json".to_owned(), 1));
    assert_eq!(left[0].1, 1);
    app.db.close();
}

struct PanicDispatcher;

#[async_trait::async_trait]
impl causeflow_shared::ports::Dispatcher for PanicDispatcher {
    async fn dispatch(
        &self,
        _: &causeflow_shared::model::DispatchTask,
    ) -> Result<(), causeflow_shared::error::StoreError> {
        panic!("the agent bus exploded (test)")
    }
}
