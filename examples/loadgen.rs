//! Load generator for `causeflow serve` on loopback (run by `scripts/load`).
//!
//! Runs, in one process and one run: `/healthz` as the server's own ceiling, signed webhooks
//! with distinct alerts (every one a durable write), and a baseline of sequential fsync'd SQLite
//! commits on the same disk, i.e. what throughput would be with one fsync per request. Each
//! phase is bounded in time and only targets the loopback address it is given.

use std::sync::Arc;
use std::time::{Duration, Instant};

use causeflow_shared::auth::sign;

struct Phase {
    name: &'static str,
    ok: usize,
    failed: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn pct(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i =
            ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len()) - 1;
        self.latencies[i].as_secs_f64() * 1000.0
    }
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

async fn run(
    name: &'static str,
    conns: usize,
    dur: Duration,
    make: Arc<dyn Fn(usize, usize) -> reqwest::RequestBuilder + Send + Sync>,
    expect: u16,
) -> Phase {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut lat) = (0usize, 0usize, Vec::new());
            let mut i = 0;
            while start.elapsed() < dur {
                let t = Instant::now();
                match make(c, i).send().await {
                    Ok(r) if r.status().as_u16() == expect => {
                        let _ = r.bytes().await;
                        ok += 1;
                        lat.push(t.elapsed());
                    }
                    _ => failed += 1,
                }
                i += 1;
            }
            (ok, failed, lat)
        }));
    }
    let mut phase = Phase {
        name,
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for t in tasks {
        let (ok, failed, lat) = t.await.unwrap();
        phase.ok += ok;
        phase.failed += failed;
        phase.latencies.extend(lat);
    }
    phase.elapsed = start.elapsed();
    phase.latencies.sort();
    phase
}

/// Sequential single-row commits with `synchronous=FULL` in `dir`: one fsync per commit.
fn fsync_baseline(dir: &str, dur: Duration) -> f64 {
    let path = std::path::Path::new(dir).join("fsync-baseline.db");
    let _ = std::fs::remove_file(&path);
    let c = rusqlite::Connection::open(&path).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.execute_batch("CREATE TABLE t(x INTEGER)").unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        c.execute("INSERT INTO t VALUES (?1)", [n as i64]).unwrap();
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(c);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    rate
}

#[tokio::main]
async fn main() {
    let addr = arg("--addr", "127.0.0.1:8080");
    assert!(
        addr.starts_with("127.") || addr.starts_with("localhost") || addr.starts_with("[::1]"),
        "loopback only"
    );
    let tenant = arg("--tenant", "bench");
    let key = arg("--key", "");
    let secret = arg("--secret", "");
    let conns: usize = arg("--connections", "64").parse().unwrap();
    let secs: u64 = arg("--seconds", "10").parse().unwrap();
    let dir = arg("--dir", "/tmp");
    let dur = Duration::from_secs(secs);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conns)
        .build()
        .unwrap();

    let health_url = format!("http://{addr}/healthz");
    let c1 = client.clone();
    let health = run(
        "GET /healthz",
        conns,
        dur,
        Arc::new(move |_, _| c1.get(&health_url)),
        200,
    )
    .await;

    let hook_url = format!("http://{addr}/v1/webhooks/{tenant}/generic");
    let c2 = client.clone();
    let run_id = chrono::Utc::now().timestamp_millis();
    let webhook = run(
        "POST webhook (distinct alerts)",
        conns,
        dur,
        Arc::new(move |c, i| {
            let body = format!(
                r#"{{"sourceAlertId":"load-{run_id}-{c}-{i}","title":"load test alert {c}/{i}","status":"firing","severity":"low","service":"loadgen"}}"#
            );
            c2.post(&hook_url)
                .header("content-type", "application/json")
                .header("x-api-key", &key)
                .header("x-webhook-signature", sign(&secret, &[body.as_bytes()]))
                .body(body)
        }),
        202,
    )
    .await;
    let fsync = fsync_baseline(&dir, Duration::from_secs(secs.min(5)));

    println!("\n{conns} connections, {secs} s per phase, loopback {addr}\n");
    println!("| phase | ok | failed | req/s | p50 ms | p99 ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for p in [&health, &webhook] {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} |",
            p.name,
            p.ok,
            p.failed,
            p.rate(),
            p.pct(0.50),
            p.pct(0.99)
        );
    }
    println!("| sequential fsync'd SQLite commits (1 fsync per request) | | | {fsync:.0} | | |");
    println!(
        "\nwebhook / healthz throughput: {:.2}x; webhook / one-fsync-per-request: {:.1}x",
        webhook.rate() / health.rate(),
        webhook.rate() / fsync
    );
}
