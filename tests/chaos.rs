//! Crashes under load: 32 connections post distinct alerts, with duplicates and resolves mixed
//! in, while `causeflow serve` is SIGKILLed and restarted on the same database. Afterwards every
//! alert answered 202 is exactly one incident, every 409 names an incident that exists, and no
//! key ever had two incidents open. The suite kills after every few hundred answers (progress,
//! not time); `scripts/chaos` runs the long form, killing about every 2 s, 10 times.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use causeflow_shared::auth::sign;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_causeflow");

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Serve {
    child: Child,
}

impl Serve {
    fn start(db: &std::path::Path, addr: &str) -> Serve {
        let child = Command::new(BIN)
            .args(["serve", "--addr", addr, "--rate-limit", "0", "--db"])
            .arg(db)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Serve { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (bounded) until the server answers /healthz.
async fn up(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "serve did not come back within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Debug, Clone)]
struct Answer {
    /// Shown in failure messages.
    #[allow(dead_code)]
    id: String,
    firing: bool,
    status: u16,
    incident: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_alerts_survive_sigkill_under_load() {
    let kills = setting("CHAOS_KILLS", 3);
    let jobs = setting("CHAOS_ALERTS", 3_000);
    let every_ms = setting("CHAOS_KILL_EVERY_MS", 0);
    let connections = 32;

    let dir = common::tempdir();
    let db = dir.join("chaos.db");
    let out = Command::new(BIN)
        .args([
            "keys", "create", "--tenant", "chaos", "--name", "c", "--json", "--db",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success());
    let key: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (api_key, secret) = (
        key["apiKey"].as_str().unwrap().to_owned(),
        key["webhookSecret"].as_str().unwrap().to_owned(),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let base = format!("http://{addr}");
    let serve = Arc::new(Mutex::new(Serve::start(&db, &addr)));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    up(&http, &base).await;

    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let created: Arc<Mutex<Vec<String>>> = Arc::default();
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (next, answered, sent, created, answers) = (
            next.clone(),
            answered.clone(),
            sent.clone(),
            created.clone(),
            answers.clone(),
        );
        let (http, base, api_key, secret) =
            (http.clone(), base.clone(), api_key.clone(), secret.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= jobs {
                    return;
                }
                // Mostly new alerts; every 7th repeats an acknowledged one (a duplicate), every
                // 11th resolves one.
                let earlier = {
                    let c = created.lock().unwrap();
                    (!c.is_empty()).then(|| c[i * 7919 % c.len()].clone())
                };
                let (id, firing) = match (i % 11, i % 7, earlier) {
                    (0, _, Some(e)) => (e, false),
                    (_, 0, Some(e)) => (e, true),
                    _ => (format!("alert-{i}"), true),
                };
                let body = json!({
                    "sourceAlertId": id,
                    "title": format!("chaos {id}"),
                    "status": if firing { "firing" } else { "resolved" },
                    "severity": "high",
                })
                .to_string();
                // A sender retries until it gets an answer, as senders do on errors.
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    sent.fetch_add(1, Ordering::SeqCst);
                    let r = http
                        .post(format!("{base}/v1/webhooks/chaos/generic"))
                        .header("content-type", "application/json")
                        .header("x-api-key", &api_key)
                        .header("x-webhook-signature", sign(&secret, &[body.as_bytes()]))
                        .body(body.clone())
                        .send()
                        .await;
                    let r = match r {
                        Ok(r) => r,
                        Err(_) => {
                            assert!(Instant::now() < deadline, "no answer for {id} within 120 s");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let status = r.status().as_u16();
                    let Ok(v) = r.json::<Value>().await else {
                        continue; // killed mid-answer: no answer, retry
                    };
                    if status == 503 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    assert!(matches!(status, 202 | 409), "{status}: {v}");
                    let incident = v["alerts"][0]["incidentId"]
                        .as_str()
                        .or_else(|| v["incidentIds"][0].as_str())
                        .map(str::to_owned);
                    if status == 202 && v["alerts"][0]["outcome"] == "created" {
                        created.lock().unwrap().push(id.clone());
                    }
                    answers.lock().unwrap().push(Answer {
                        id: id.clone(),
                        firing,
                        status,
                        incident,
                    });
                    answered.fetch_add(1, Ordering::SeqCst);
                    break;
                }
            }
        }));
    }

    // The killer: SIGKILL and restart, after every share of the answers (or every N ms in the
    // long form).
    let mut restarts = 0;
    for k in 1..=kills {
        if every_ms > 0 {
            tokio::time::sleep(Duration::from_millis(every_ms as u64)).await;
        } else {
            let target = jobs * k / (kills + 1);
            let deadline = Instant::now() + Duration::from_secs(120);
            while answered.load(Ordering::SeqCst) < target {
                assert!(Instant::now() < deadline, "load stalled at {answered:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        {
            let mut s = serve.lock().unwrap();
            s.kill();
            *s = Serve::start(&db, &addr);
        }
        restarts += 1;
        up(&http, &base).await;
    }
    for t in tasks {
        t.await.unwrap();
    }

    // Let triage finish (the queue drains), then stop gracefully and read the database.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let queued: i64 = conn
            .query_row("SELECT count(*) FROM queue", [], |r| r.get(0))
            .unwrap();
        if queued == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{queued} alerts still queued after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    {
        let s = serve.lock().unwrap();
        unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut incidents: BTreeMap<String, (String, String)> = BTreeMap::new();
    {
        let mut st = conn
            .prepare("SELECT incident_id, status, data FROM incidents")
            .unwrap();
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .unwrap();
        for row in rows {
            let (id, status, data) = row.unwrap();
            let v: Value = serde_json::from_str(&data).unwrap();
            incidents.insert(
                id,
                (v["sourceAlertId"].as_str().unwrap().to_owned(), status),
            );
        }
    }
    let answers = answers.lock().unwrap().clone();
    let acknowledged = answers.len();
    let created: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == 202 && a.firing && a.incident.is_some())
        .collect();
    let mut lost = Vec::new();
    for a in &created {
        if let Some(id) = &a.incident {
            if !incidents.contains_key(id) {
                lost.push((*a).clone());
            }
        }
    }
    let mut phantom = Vec::new();
    for a in answers.iter().filter(|a| a.status == 409) {
        if !a
            .incident
            .as_ref()
            .is_some_and(|i| incidents.contains_key(i))
        {
            phantom.push(a.clone());
        }
    }
    let mut open_per_key: BTreeMap<&str, usize> = BTreeMap::new();
    for (source, status) in incidents.values() {
        if status != "resolved" {
            *open_per_key.entry(source).or_default() += 1;
        }
    }
    let doubled: BTreeSet<&&str> = open_per_key
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k)
        .collect();
    // Nothing triaged twice: each incident's dispatch tasks are exactly its agents, once each.
    let mut wrong_tasks = Vec::new();
    {
        let mut st = conn
            .prepare(
                "SELECT i.incident_id, json_array_length(i.data, '$.agents'),
                        (SELECT count(*) FROM dispatches d WHERE d.incident_id = i.incident_id AND d.kind = 'dispatch')
                 FROM incidents i",
            )
            .unwrap();
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .unwrap();
        for row in rows {
            let (id, agents, tasks) = row.unwrap();
            if agents != tasks {
                wrong_tasks.push((id, agents, tasks));
            }
        }
    }
    println!(
        "chaos: {restarts} SIGKILLs; requests sent {}, answered {acknowledged} ({} created, {} duplicate), incidents stored {}, lost {}",
        sent.load(Ordering::SeqCst),
        created.len(),
        answers.iter().filter(|a| a.status == 409).count(),
        incidents.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    assert!(phantom.is_empty(), "409s naming no incident: {phantom:?}");
    assert!(
        doubled.is_empty(),
        "keys with two open incidents: {doubled:?}"
    );
    assert!(
        wrong_tasks.is_empty(),
        "(incident, agents, tasks): {wrong_tasks:?}"
    );
    assert!(
        created.len() > jobs / 2,
        "the load hardly ran: {} created",
        created.len()
    );
}
