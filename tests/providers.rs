//! Every provider's realistic fixtures (tests/fixtures/webhooks/scenarios.json) sent over HTTP to
//! a real server, asserting the answer, the outcome per alert, the stored incident after triage,
//! and the agent tasks recorded for it.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::{Resp, Server};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/webhooks");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_scenarios() {
    let manifest: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(Path::new(FIXTURES).join("scenarios.json")).unwrap(),
    )
    .unwrap();
    assert!(manifest.len() >= 25, "the fixture manifest lost scenarios");
    let mut failures = Vec::new();
    let mut providers_seen = HashSet::new();
    for scenario in &manifest {
        let name = scenario["name"].as_str().unwrap();
        providers_seen.insert(scenario["provider"].as_str().unwrap().to_owned());
        if let Err(e) = run_scenario(scenario).await {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert_eq!(
        providers_seen.len(),
        causeflow_shared::model::Provider::ALL.len(),
        "every provider has scenarios"
    );
    assert!(
        failures.is_empty(),
        "{} scenario(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

async fn run_scenario(scenario: &Value) -> Result<(), String> {
    let s = Server::start().await;
    let provider = scenario["provider"].as_str().unwrap();
    let mut seen_incidents: HashSet<String> = HashSet::new();
    for (n, step) in scenario["steps"].as_array().unwrap().iter().enumerate() {
        let file = step["body"].as_str().unwrap();
        let body =
            std::fs::read(Path::new(FIXTURES).join(file)).map_err(|e| format!("{file}: {e}"))?;
        let headers: Vec<(String, String)> = step["headers"]
            .as_object()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let extra: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let signed = step["sign"].as_bool().unwrap_or(true);
        let r: Resp = s.post(provider, &body, signed, &extra).await;
        let ctx = format!("step {n} ({file})");
        let expect = &step["expect"];
        if r.status != expect["status"].as_u64().unwrap() as u16 {
            return Err(format!(
                "{ctx}: status {} != {}; body {}",
                r.status, expect["status"], r.text
            ));
        }
        let want = expect["alerts"].as_array().unwrap();
        // PagerDuty's answer is one event's, in PagerDuty's own shape.
        let got = match r.json.get("dedup_key") {
            Some(key) => {
                if r.json["status"] != "success" || r.json["message"] != "Event processed" {
                    return Err(format!("{ctx}: not PagerDuty's answer: {}", r.text));
                }
                vec![
                    serde_json::json!({"sourceAlertId": key, "outcome": r.json["outcome"],
                    "incidentId": r.json["incidentId"]}),
                ]
            }
            None => r.json["alerts"].as_array().cloned().unwrap_or_default(),
        };
        if got.len() != want.len() {
            return Err(format!(
                "{ctx}: {} alerts answered, {} expected: {}",
                got.len(),
                want.len(),
                r.text
            ));
        }
        for (w, g) in want.iter().zip(&got) {
            for f in ["sourceAlertId", "outcome"] {
                // "*": an id the server makes up (a PagerDuty trigger without dedup_key).
                let any = w[f] == "*" && g[f].as_str().is_some_and(|v| !v.is_empty());
                if w[f] != g[f] && !any {
                    return Err(format!("{ctx}: {f} {} != expected {}", g[f], w[f]));
                }
            }
            let outcome = w["outcome"].as_str().unwrap();
            let incident_id = g["incidentId"].as_str().map(str::to_owned);
            match (outcome, &incident_id) {
                ("created", Some(id)) => {
                    if !seen_incidents.insert(id.clone()) {
                        return Err(format!("{ctx}: created reused incident {id}"));
                    }
                }
                ("duplicate" | "resolved" | "acknowledged", Some(id)) => {
                    if !seen_incidents.contains(id) {
                        return Err(format!("{ctx}: {outcome} names unknown incident {id}"));
                    }
                }
                ("ignored" | "acknowledged", None) => {}
                _ => {
                    return Err(format!(
                        "{ctx}: outcome {outcome} with incident {incident_id:?}"
                    ))
                }
            }
            if let (Some(wi), Some(id)) = (w.get("incident"), &incident_id) {
                check_incident(&s, &ctx, id, wi).await?;
            }
        }
    }
    s.shutdown().await;
    Ok(())
}

async fn check_incident(s: &Server, ctx: &str, id: &str, want: &Value) -> Result<(), String> {
    let status = want["status"].as_str().unwrap_or("open");
    let inc = s.wait_incident(id, |i| i.status.as_str() == status).await;
    let inc_json = serde_json::to_value(&inc).unwrap();
    for f in [
        "severity",
        "agents",
        "title",
        "service",
        "environment",
        "test",
    ] {
        if let Some(w) = want.get(f) {
            if &inc_json[f] != w {
                return Err(format!(
                    "{ctx}: incident {f} {} != expected {w}",
                    inc_json[f]
                ));
            }
        }
    }
    if let Some(tags) = want.get("tags").and_then(Value::as_object) {
        for (k, v) in tags {
            if inc_json["tags"][k] != *v {
                return Err(format!(
                    "{ctx}: tag {k} = {} != expected {v} (tags {})",
                    inc_json["tags"][k], inc_json["tags"]
                ));
            }
        }
    }
    // The agents recorded were really dispatched, and cancelled on resolve.
    let agents: Vec<String> = inc.agents.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let rows = s.app.dispatcher.for_incident(&s.tenant, id).await.unwrap();
        let of = |kind: &str| -> Vec<String> {
            rows.iter()
                .filter(|r| r.kind == kind)
                .map(|r| r.agent.clone())
                .collect()
        };
        let want_cancel = if status == "resolved" {
            agents.clone()
        } else {
            vec![]
        };
        if of("dispatch") == agents && of("cancel") == want_cancel {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "{ctx}: dispatched {:?} / cancelled {:?}, expected {agents:?} / {want_cancel:?}",
                of("dispatch"),
                of("cancel")
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
