//! The sample SNS forwarder (functions/sns-forwarder): fed the Lambda SNS event from `events/`,
//! posting to a real `causeflow serve` router over loopback, and its retry rules.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sns::SnsEvent;
use causeflow_shared::model::IncidentStatus;
use causeflow_shared::ports::IncidentStore;
use common::Server;
use sns_forwarder::{ForwardError, Forwarder};

fn event() -> SnsEvent {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/events/sns-forwarder-alarm.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_the_lambda_sns_event_signed_to_the_ingest_router() {
    let s = Server::start().await;
    let f = Forwarder::new(&s.webhook_url("cloudwatch"), &s.api_key, &s.secret);
    let ev = event();
    assert_eq!(ev.records.len(), 2);
    f.forward(ev.clone()).await.unwrap();
    // ALARM opened an incident and OK resolved it.
    let query = causeflow_shared::ports::IncidentQuery {
        limit: 10,
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut page = s.app.incidents.list("acme", &query).await.unwrap();
    while page
        .incidents
        .first()
        .is_none_or(|i| i.status != IncidentStatus::Resolved)
    {
        assert!(std::time::Instant::now() < deadline, "{page:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        page = s.app.incidents.list("acme", &query).await.unwrap();
    }
    assert_eq!(page.incidents.len(), 1);
    let inc = &page.incidents[0];
    assert_eq!(inc.provider.as_str(), "cloudwatch");
    assert!(inc.source_alert_id.starts_with("arn:aws:cloudwatch:"));
    // Re-delivering the same event is harmless: the ALARM opens a new incident only because the
    // OK released the key; nothing fails.
    f.forward(ev).await.unwrap();
}

/// A server that answers each request with the next status of `script` (then the last one).
async fn scripted(script: Vec<u16>) -> (String, Arc<AtomicUsize>) {
    use axum::routing::post;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = axum::Router::new().route(
        "/v1/webhooks/acme/cloudwatch",
        post(move |headers: axum::http::HeaderMap| {
            let c = c.clone();
            let script = script.clone();
            async move {
                assert!(
                    headers.contains_key("x-api-key")
                        && headers.contains_key("x-webhook-signature")
                );
                let n = c.fetch_add(1, Ordering::SeqCst);
                axum::http::StatusCode::from_u16(script[n.min(script.len() - 1)]).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/webhooks/acme/cloudwatch",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_5xx_with_backoff_and_fails_the_invocation_when_it_must() {
    let quick = vec![Duration::from_millis(5); 3];
    let mut one = event();
    one.records.truncate(1);

    // 503, 500, then 202: delivered on the third attempt.
    let (url, calls) = scripted(vec![503, 500, 202]).await;
    Forwarder::new(&url, "k", "s")
        .with_backoff(quick.clone())
        .forward(one.clone())
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // 409 is an alert already open: delivered.
    let (url, calls) = scripted(vec![409]).await;
    Forwarder::new(&url, "k", "s")
        .with_backoff(quick.clone())
        .forward(one.clone())
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Always 503: every attempt, then the invocation fails (Lambda retries, then the DLQ).
    let (url, calls) = scripted(vec![503]).await;
    let err = Forwarder::new(&url, "k", "s")
        .with_backoff(quick.clone())
        .forward(one.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ForwardError::GaveUp { attempts: 4, .. }),
        "{err}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    // 401 (a wrong key) is not retried, and fails the invocation.
    let (url, calls) = scripted(vec![401]).await;
    let err = Forwarder::new(&url, "k", "s")
        .with_backoff(quick)
        .forward(one)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ForwardError::Refused { status: 401, .. }),
        "{err}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
