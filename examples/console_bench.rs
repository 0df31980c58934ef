//! Console benchmark (run by `scripts/console-bench`): the Incidents page of a tenant with
//! 10,000 incidents, served by `causeflow serve` on loopback, against `/healthz` measured in the
//! same run and interleaved with it (this machine is shared and noisy: the ratio means more than
//! the milliseconds). Also prints what a first visit transfers (page, stylesheet, script).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use causeflow_shared::host::embedded::{Embedded, EmbeddedConfig};
use causeflow_shared::model::{Incident, IncidentStatus, Provider, Severity};
use causeflow_shared::ports::IncidentStore;

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1000.0
}

fn incident(n: usize, now: &str) -> Incident {
    let sev = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Info,
    ][n % 5];
    Incident {
        tenant_id: "bench".into(),
        incident_id: format!("inc_{:032x}", n),
        provider: Provider::ALL[n % Provider::ALL.len()],
        source_alert_id: format!("alert-{n}"),
        title: format!("Checkout p99 latency above 2s on shard {n}"),
        title_truncated: false,
        message: Some("p99 2.7s over 5 minutes; error budget burn 14x".into()),
        severity: sev,
        status: if n.is_multiple_of(3) {
            IncidentStatus::Resolved
        } else {
            IncidentStatus::Open
        },
        service: Some("checkout".into()),
        environment: Some("prod".into()),
        tags: BTreeMap::from([("team".to_owned(), "payments".to_owned())]),
        links: vec!["https://runbooks.example.com/checkout".into()],
        test: false,
        first_seen: now.into(),
        last_seen: now.into(),
        resolved_at: None,
        acknowledged_at: None,
        agents: vec!["logs".into(), "metrics".into()],
        duplicate_count: None,
    }
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("INCIDENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let requests: usize = std::env::var("REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let dir = std::env::temp_dir().join(format!("causeflow-console-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let app = Embedded::open(EmbeddedConfig::new(dir.join("bench.db"))).unwrap();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        // Concurrent writes: the writer thread commits them in a few batches.
        let writes: Vec<_> = chunk
            .iter()
            .map(|i| {
                let store = app.incidents.clone();
                let inc = incident(*i, &now);
                tokio::spawn(async move { store.open(inc).await })
            })
            .collect();
        for w in writes {
            w.await.unwrap().unwrap();
        }
    }
    eprintln!("seeded {n} incidents in {:.1} s", t.elapsed().as_secs_f64());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let runner = app.clone();
    tokio::spawn(async move { runner.run(listener, std::future::pending()).await });
    let link = causeflow_shared::console::create_sign_in_link(
        &app.sessions,
        "bench",
        Duration::from_secs(60),
        &base,
    )
    .await
    .unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let token = link.split_once("token=").unwrap().1.to_owned();
    let r = http
        .post(format!("{base}/console/signin"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = format!("{base}/console/t/bench/incidents");
    let health = format!("{base}/healthz");

    // A first visit: the page and the two assets it names.
    let html = http
        .get(&page)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        html.matches("<tr data-id=").count(),
        50,
        "the page shows 50 incidents"
    );
    let mut bytes = html.len();
    for attr in ["href=\"/console/assets/", "src=\"/console/assets/"] {
        let at = html.find(attr).unwrap() + attr.len() - "/console/assets/".len();
        let path = &html[at..at + html[at..].find('"').unwrap()];
        bytes += http
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .len();
    }

    let (mut page_t, mut health_t) = (Vec::with_capacity(requests), Vec::with_capacity(requests));
    for i in 0..requests + 200 {
        let t = Instant::now();
        let r = http
            .get(&page)
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        let p = t.elapsed();
        let t = Instant::now();
        http.get(&health)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let h = t.elapsed();
        // The first 200 of each warm caches and connections.
        if i >= 200 {
            page_t.push(p);
            health_t.push(h);
        }
    }
    let (p50, p99) = (pct(&mut page_t, 0.50), pct(&mut page_t, 0.99));
    let (h50, h99) = (pct(&mut health_t, 0.50), pct(&mut health_t, 0.99));
    println!("incidents in the tenant:     {n}");
    println!("Incidents page (50 rows):    p50 {p50:.2} ms, p99 {p99:.2} ms  ({requests} requests, sequential, loopback)");
    println!("/healthz, same run:          p50 {h50:.2} ms, p99 {h99:.2} ms");
    println!(
        "ratio page/healthz:          p50 {:.1}x, p99 {:.1}x",
        p50 / h50,
        p99 / h99
    );
    println!(
        "first visit transfers:       {:.1} KB (page {:.1} KB + stylesheet + script, uncompressed)",
        bytes as f64 / 1024.0,
        html.len() as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
