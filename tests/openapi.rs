//! The OpenAPI description of the public API (docs/openapi.json): generated from the code,
//! served at `/openapi.json`, committed, and the three the same. After changing the API,
//! regenerate the file with `UPDATE_OPENAPI=1 cargo test --test openapi`.

mod common;

use std::path::Path;

use common::Server;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_and_served_descriptions_match_the_code() {
    let generated = causeflow_shared::http::openapi::document();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, format!("{generated}\n")).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "docs/openapi.json differs from the code: run `UPDATE_OPENAPI=1 cargo test --test openapi` \
         and commit the file"
    );

    let doc: Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for route in [
        "/v1/webhooks/{tenant}/{provider}",
        "/v1/tenants/{tenant}/incidents",
        "/v1/tenants/{tenant}/incidents/{incident}",
        "/healthz",
    ] {
        assert!(
            paths.contains(&route),
            "{route} is not described: {paths:?}"
        );
    }
    for schema in [
        "Incident",
        "IncidentPage",
        "Problem",
        "Admitted",
        "AlertResult",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} missing"
        );
    }

    let s = Server::start().await;
    let served: Value = s
        .client
        .get(format!("{}/openapi.json", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, doc);
}

/// The AWS stack routes every described path, and the description itself, to the ingest
/// function: the API is the same on both hosts.
#[test]
fn the_stack_routes_every_described_path() {
    let template: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("template.yaml"))
            .unwrap(),
    )
    .unwrap();
    let template = serde_json::to_value(template).unwrap();
    // Path parameters are named differently ({tenant} here, {tenantId} there): compare shapes.
    let shape = |p: &str, method: &str| {
        let mut out = String::new();
        let mut in_param = false;
        for c in p.chars() {
            match c {
                '{' => {
                    in_param = true;
                    out.push_str("{}");
                }
                '}' => in_param = false,
                _ if in_param => {}
                c => out.push(c),
            }
        }
        format!("{} {out}", method.to_ascii_uppercase())
    };
    let routed: Vec<String> = template["Resources"]["IngestFunction"]["Properties"]["Events"]
        .as_object()
        .unwrap()
        .values()
        .map(|e| {
            shape(
                e["Properties"]["Path"].as_str().unwrap(),
                e["Properties"]["Method"].as_str().unwrap(),
            )
        })
        .collect();
    let doc: Value = serde_json::from_str(&causeflow_shared::http::openapi::document()).unwrap();
    let mut described = vec![shape("/openapi.json", "get")];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            described.push(shape(path, method));
        }
    }
    for route in described {
        assert!(
            routed.contains(&route),
            "{route} is not routed in template.yaml: {routed:?}"
        );
    }
}
