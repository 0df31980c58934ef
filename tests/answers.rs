//! docs/contract.md#answers: every answer, and bad input that must get a clear 4xx (never a 5xx or
//! a panic).

mod common;

use causeflow_shared::auth::sign;
use causeflow_shared::http::RateLimit;
use causeflow_shared::ports::KeyAdmin;
use common::{Resp, Server};
use serde_json::json;

async fn send(s: &Server, provider: &str, content_type: Option<&str>, body: Vec<u8>) -> Resp {
    let mut req = s
        .client
        .post(s.webhook_url(provider))
        .header("x-api-key", &s.api_key)
        .header("x-webhook-signature", sign(&s.secret, &[&body]));
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    Resp::from(req.body(body).send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_400_with_an_actionable_detail() {
    let s = Server::start().await;
    let json = Some("application/json");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("generic", br#"{"sourceAlertId": "a", "title": "#.to_vec(), "not valid JSON"),
        ("generic", Vec::new(), "empty"),
        ("generic", b"   \n".to_vec(), "empty"),
        ("generic", br#"[{"sourceAlertId":"a"}]"#.to_vec(), "JSON array"),
        ("generic", b"\"just a string\"".to_vec(), "JSON string"),
        ("generic", b"null".to_vec(), "JSON null"),
        ("generic", vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'], "UTF-8"),
        ("generic", br#"{"sourceAlertId": 12, "title": "x"}"#.to_vec(), "`sourceAlertId`"),
        ("generic", br#"{"sourceAlertId": "a", "title": ["x"]}"#.to_vec(), "`title`"),
        ("generic", br#"{"sourceAlertId": "a", "title": "x", "status": "open"}"#.to_vec(), "`status`"),
        ("generic", br#"{"sourceAlertId": "a", "title": "x", "severity": "sev1"}"#.to_vec(), "`severity`"),
        ("generic", br#"{"sourceAlertId": "a", "title": "x", "tags": "env:prod"}"#.to_vec(), "`tags`"),
        ("generic", br#"{"sourceAlertId": "a", "title": "x", "test": "yes"}"#.to_vec(), "`test`"),
        ("generic", br#"{"title": "x"}"#.to_vec(), "`sourceAlertId`"),
        ("datadog", br#"{"title": "no id at all"}"#.to_vec(), "$ALERT_ID"),
        ("datadog", br#"{"alert_id": "1", "tags": 5}"#.to_vec(), "`tags`"),
        ("grafana", br#"{"alerts": {"status": "firing"}}"#.to_vec(), "`alerts`"),
        ("grafana", br#"{"alerts": []}"#.to_vec(), "at least one alert"),
        ("grafana", br#"{"alerts": [{"status": "firing", "labels": {}}]}"#.to_vec(), "`alerts[0].fingerprint`"),
        ("grafana", br#"{"alerts": [{"status": "firing", "fingerprint": "a", "labels": {"x": {"y": 1}}}]}"#.to_vec(), "alerts[0].labels.x"),
        ("cloudwatch", br#"{"Type": "Notification", "Message": "{not json"}"#.to_vec(), "`Message`"),
        ("cloudwatch", br#"{"Type": "Notification", "Message": "{\"AlarmArn\":\"arn:x\",\"NewStateValue\":\"MAYBE\"}"}"#.to_vec(), "NewStateValue"),
        ("cloudwatch", br#"{"hello": "world"}"#.to_vec(), "`Type`"),
        ("sentry", br#"{"action": "created", "data": {"issue": "x"}}"#.to_vec(), "`data.issue`"),
    ];
    for (provider, body, needle) in cases {
        let extra_resource = provider == "sentry" && body.starts_with(br#"{"action""#);
        let r = if extra_resource {
            let b = body.clone();
            Resp::from(
                s.client
                    .post(s.webhook_url(provider))
                    .header("x-api-key", &s.api_key)
                    .header("content-type", "application/json")
                    .header("sentry-hook-resource", "issue")
                    .header("x-webhook-signature", sign(&s.secret, &[&b]))
                    .body(b)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        } else {
            send(&s, provider, json, body.clone()).await
        };
        r.expect(400);
        assert_eq!(
            r.code(),
            "invalid_payload",
            "{provider} {:?}",
            String::from_utf8_lossy(&body)
        );
        let detail = r.json["detail"].as_str().unwrap();
        assert!(
            detail.contains(needle),
            "{provider}: detail {detail:?} should mention {needle:?}"
        );
    }
    assert_eq!(s.dedup_rows().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_before_parsing() {
    let s = Server::start().await;
    // 2 MiB of garbage: refused on its Content-Length, never parsed. The server answers before
    // reading the body, so a raw socket is used to read the answer even if the write breaks.
    let (status, text) = raw_post(&s, &vec![b'x'; 2 * 1024 * 1024], false).await;
    assert_eq!(status, 413, "{text}");
    assert!(
        text.contains("payload_too_large") && text.contains("application/problem+json"),
        "{text}"
    );
    // Just over the limit, sent chunked without a Content-Length: refused while reading.
    let (status, head) = raw_post(&s, &vec![b' '; 256 * 1024 + 1], true).await;
    assert_eq!(status, 413, "{head}");
    // Exactly at the limit is accepted (a valid alert padded with whitespace).
    let mut body = json!({"sourceAlertId": "big", "title": "x"})
        .to_string()
        .into_bytes();
    body.resize(256 * 1024, b' ');
    send(&s, "generic", Some("application/json"), body)
        .await
        .expect(202);
}

/// POSTs `body` over a raw socket, with `Transfer-Encoding: chunked` or a Content-Length;
/// returns the status and the whole response.
async fn raw_post(s: &Server, body: &[u8], chunked: bool) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = s.base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/webhooks/{}/generic HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         X-API-Key: {}\r\nX-Webhook-Signature: {}\r\n{}Connection: close\r\n\r\n",
        s.tenant,
        s.api_key,
        sign(&s.secret, &[body]),
        if chunked { "Transfer-Encoding: chunked\r\n".to_owned() } else { format!("Content-Length: {}\r\n", body.len()) }
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(32 * 1024) {
        let framed = if chunked {
            [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat()
        } else {
            chunk.to_vec()
        };
        if sock.write_all(&framed).await.is_err() {
            break; // the server may answer and close before the whole body is sent
        }
    }
    if chunked {
        let _ = sock.write_all(b"0\r\n\r\n").await;
    }
    let mut resp = Vec::new();
    let _ = sock.read_to_end(&mut resp).await;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_types() {
    let s = Server::start().await;
    let body = |id: &str| {
        json!({"sourceAlertId": id, "title": "x"})
            .to_string()
            .into_bytes()
    };
    for (i, ct) in [
        "application/json",
        "application/json; charset=utf-8",
        "application/vnd.alert+json",
    ]
    .iter()
    .enumerate()
    {
        send(&s, "generic", Some(ct), body(&format!("ct{i}")))
            .await
            .expect(202);
    }
    send(&s, "generic", None, body("ct-none")).await.expect(202);
    for ct in [
        "application/x-www-form-urlencoded",
        "text/plain",
        "application/xml",
        "multipart/form-data; boundary=x",
    ] {
        let r = send(&s, "generic", Some(ct), body("ct-bad")).await;
        r.expect(415);
        assert_eq!(r.code(), "unsupported_media_type");
    }
    // SNS posts its envelope as text/plain.
    let alarm = json!({"AlarmName":"cpu","AlarmArn":"arn:aws:cloudwatch:eu-west-1:123456789012:alarm:cpu","NewStateValue":"ALARM"});
    let env = json!({"Type":"Notification","MessageId":"m1","TopicArn":"arn:aws:sns:eu-west-1:123456789012:alarms","Message":alarm.to_string()});
    send(
        &s,
        "cloudwatch",
        Some("text/plain; charset=UTF-8"),
        env.to_string().into_bytes(),
    )
    .await
    .expect(202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_provider_and_routes_are_404() {
    let s = Server::start().await;
    let r = send(&s, "opsgenie", Some("application/json"), b"{}".to_vec()).await;
    r.expect(404);
    assert_eq!(r.code(), "unknown_provider");
    assert!(r.json["detail"]
        .as_str()
        .unwrap()
        .contains("datadog, grafana, cloudwatch, sentry, generic, alertmanager, pagerduty"));
    let r = Resp::from(
        s.client
            .get(format!("{}/nope", s.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_tenant_rate_limit_answers_429_with_retry_after() {
    let s = Server::start_with(|c| {
        c.rate_limit = RateLimit {
            per_sec: 0.5,
            burst: 3.0,
        }
    })
    .await;
    for i in 0..3 {
        s.generic(&format!("rl{i}"), "firing").await.expect(202);
    }
    let r = s.generic("rl3", "firing").await;
    r.expect(429);
    assert_eq!(r.code(), "rate_limited");
    assert!(r.header("retry-after").parse::<u64>().unwrap() >= 1);
    // Another tenant is not affected.
    let other = s.app.directory.create_key("globex", "k").await.unwrap();
    let body = json!({"sourceAlertId": "g", "title": "x"}).to_string();
    let r = Resp::from(
        s.client
            .post(format!("{}/v1/webhooks/globex/generic", s.base))
            .header("x-api-key", &other.api_key)
            .header(
                "x-webhook-signature",
                sign(&other.webhook_secret, &[body.as_bytes()]),
            )
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_but_valid_text_is_kept_byte_for_byte() {
    let s = Server::start().await;
    let long: String = "ü".repeat(10_000);
    let rtl = "تنبيه: ارتفاع زمن الاستجابة 🚨 שגיאה בשרת 🔥";
    for (id, title) in [("long", long.as_str()), ("rtl", rtl)] {
        let body = json!({"sourceAlertId": id, "title": title, "message": title}).to_string();
        let r = send(&s, "generic", Some("application/json"), body.into_bytes()).await;
        r.expect(202);
        let i = s.wait_incident(&r.incident_id(), |_| true).await;
        if id == "long" {
            assert!(i.title_truncated);
            assert_eq!(i.title.chars().count(), 1024);
            assert_eq!(i.message.as_deref(), Some(title), "the message is not cut");
        } else {
            assert_eq!(i.title, rtl);
            assert!(!i.title_truncated);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_api_pages_filters_and_validates() {
    let s = Server::start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = s.generic(&format!("p{i}"), "firing").await;
        r.expect(202);
        ids.push(r.incident_id());
    }
    s.generic("p0", "resolved").await.expect(202);
    for id in &ids {
        s.wait_incident(id, |i| {
            i.incident_id != ids[0] || i.status.as_str() == "resolved"
        })
        .await;
    }
    let get = |q: String| {
        let s = &s;
        async move {
            Resp::from(
                s.client
                    .get(format!("{}/v1/tenants/acme/incidents{q}", s.base))
                    .header("x-api-key", &s.api_key)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let page1 = get("?limit=2".into()).await;
    page1.expect(200);
    let got: Vec<&str> = page1.json["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["incidentId"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[4].as_str(), ids[3].as_str()], "newest first");
    let cursor = page1.json["nextCursor"].as_str().unwrap().to_owned();
    let page2 = get(format!("?limit=2&cursor={cursor}")).await;
    let got: Vec<&str> = page2.json["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["incidentId"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str()]);

    let resolved = get("?status=resolved".into()).await;
    assert_eq!(resolved.json["incidents"].as_array().unwrap().len(), 1);
    let open = get("?status=open".into()).await;
    assert_eq!(open.json["incidents"].as_array().unwrap().len(), 4);
    assert!(open.json.get("nextCursor").is_none());

    for q in ["?status=closed", "?limit=0", "?limit=abc", "?limit=201"] {
        let r = get(q.into()).await;
        r.expect(400);
        assert_eq!(r.code(), "invalid_query", "{q}");
    }
    let one = Resp::from(
        s.client
            .get(format!("{}/v1/tenants/acme/incidents/{}", s.base, ids[0]))
            .header("x-api-key", &s.api_key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    one.expect(200);
    assert_eq!(one.json["status"], "resolved");
    assert_eq!(one.json["agents"], json!(["logs", "metrics", "deploys"]));
    let missing = Resp::from(
        s.client
            .get(format!("{}/v1/tenants/acme/incidents/inc_nope", s.base))
            .header("x-api-key", &s.api_key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    missing.expect(404);
    let nokey = Resp::from(
        s.client
            .get(format!("{}/v1/tenants/acme/incidents", s.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    nokey.expect(401);
    assert_eq!(nokey.code(), "missing_api_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_ids_are_refused_and_oversized_names_cut() {
    let s = Server::start().await;
    let long_id = "x".repeat(2_000);
    let r = send(
        &s,
        "generic",
        Some("application/json"),
        json!({"sourceAlertId": long_id, "title": "t"})
            .to_string()
            .into_bytes(),
    )
    .await;
    r.expect(400);
    assert!(
        r.json["detail"].as_str().unwrap().contains("sourceAlertId"),
        "{}",
        r.text
    );
    // Just under the body limit, as Datadog's id: refused, and the server keeps serving.
    let huge = "y".repeat(262_000);
    let r = send(
        &s,
        "datadog",
        Some("application/json"),
        json!({ "id": huge }).to_string().into_bytes(),
    )
    .await;
    r.expect(400);
    let r = send(
        &s,
        "generic",
        Some("application/json"),
        json!({"sourceAlertId": "svc", "title": "t", "service": "s".repeat(262_000)})
            .to_string()
            .into_bytes(),
    )
    .await;
    r.expect(202);
    let inc = s.wait_incident(&r.incident_id(), |_| true).await;
    assert_eq!(inc.service.unwrap().len(), 256);
    s.generic("after", "firing").await.expect(202);
}
