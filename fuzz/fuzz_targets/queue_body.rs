//! Any text in an alert survives the queue: the body is one SQS accepts, and reads back equal.
#![no_main]

use causeflow_shared::model::{Alert, AlertStatus, Provider, QueuedAlert, Severity};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\u{1}');
    let (id, title, message) = (parts.next(), parts.next(), parts.next());
    let id = id.filter(|s| !s.is_empty()).unwrap_or("x");
    let mut alert = Alert {
        source_alert_id: id.to_owned(),
        status: AlertStatus::Firing,
        title: String::new(),
        title_truncated: false,
        message: message.map(str::to_owned),
        severity: Severity::High,
        service: None,
        environment: None,
        tags: [(id.to_owned(), title.unwrap_or("").to_owned())].into(),
        links: Vec::new(),
        test: false,
        unsigned: false,
    };
    alert.set_title(title.unwrap_or("t"));
    let msg = QueuedAlert {
        tenant_id: "acme".into(),
        provider: Provider::Generic,
        incident_id: "inc_1".into(),
        alert,
        received_at: "2026-01-01T00:00:00.000Z".into(),
        request_id: None,
    };
    let body = msg.to_queue_body();
    assert!(body.chars().all(causeflow_shared::model::sqs_accepts));
    let back: QueuedAlert = serde_json::from_str(&body).unwrap();
    assert_eq!(back, msg);
});
