//! The `causeflow` binary as a user runs it: first start, key management while `serve` runs,
//! `sign`, `incidents list`, graceful shutdown, and durability across SIGKILL.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use causeflow_shared::auth::sign;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_causeflow");

fn cli(db: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .arg("--db")
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "causeflow {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn create_key(db: &Path, tenant: &str) -> Value {
    serde_json::from_str(&cli(
        db,
        &[
            "keys", "create", "--tenant", tenant, "--name", "ci", "--json",
        ],
    ))
    .unwrap()
}

/// `causeflow serve` on an ephemeral port; returns the child, its address and its stdout so far.
/// Callers signal and wait for the child themselves.
fn serve(db: &Path, extra: &[&str]) -> (Child, String, String) {
    serve_with(db, extra, false)
}

/// `causeflow serve` on a free loopback port, without rate limits, logging warnings only: for
/// the caller to set its output up and start.
fn serve_command(db: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--rate-limit", "0"])
        .args(extra)
        .arg("--db")
        .arg(db)
        .env("RUST_LOG", "warn");
    cmd
}

/// A pseudo-terminal: the end to read, and the end to give the child as its stdout.
fn pty() -> (std::fs::File, Stdio) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two new descriptors, which are owned from here on.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty failed");
    unsafe {
        (
            std::fs::File::from_raw_fd(master),
            Stdio::from(OwnedFd::from_raw_fd(slave)),
        )
    }
}

/// Like [`serve`], with stdout on a terminal (as a user starting it by hand) when `tty`.
#[allow(clippy::zombie_processes)]
fn serve_with(db: &Path, extra: &[&str], tty: bool) -> (Child, String, String) {
    let mut cmd = serve_command(db, extra);
    cmd.stderr(Stdio::null());
    let (child, reader): (Child, Box<dyn std::io::Read + Send>) = if tty {
        let (master, slave) = pty();
        let child = cmd.stdout(slave).spawn().unwrap();
        (child, Box::new(master))
    } else {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let out = child.stdout.take().unwrap();
        (child, Box::new(out))
    };
    let mut out = BufReader::new(reader);
    let mut printed = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap_or(0) > 0,
            "serve exited early: {printed}"
        );
        // A terminal turns "\n" into "\r\n".
        printed.push_str(&line.replace('\r', ""));
        if let Some(rest) = line.split("listening on http://").nth(1) {
            let addr = rest.split_whitespace().next().unwrap().to_owned();
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in out.lines() {});
            return (child, addr, printed);
        }
        assert!(Instant::now() < deadline, "serve did not start: {printed}");
    }
}

fn signal(child: &Child, sig: i32) {
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "serve did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn db_path() -> PathBuf {
    common::tempdir().join("causeflow.db")
}

async fn post(
    client: &reqwest::Client,
    addr: &str,
    tenant: &str,
    key: &Value,
    body: &str,
) -> reqwest::Response {
    client
        .post(format!("http://{addr}/v1/webhooks/{tenant}/generic"))
        .header("content-type", "application/json")
        .header("x-api-key", key["apiKey"].as_str().unwrap())
        .header(
            "x-webhook-signature",
            sign(key["webhookSecret"].as_str().unwrap(), &[body.as_bytes()]),
        )
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_prints_a_working_curl_command() {
    let db = db_path();
    let (mut child, addr, printed) = serve_with(&db, &[], true);
    assert!(
        printed.contains("API key:") && printed.contains("Webhook secret:"),
        "{printed}"
    );
    let api_key = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("API key:"))
        .unwrap()
        .trim()
        .to_owned();
    // Run the printed command exactly as a user would paste it.
    let start = printed.find("curl -sS -X POST").unwrap();
    let end = printed[start..].find("\n\n").unwrap() + start;
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{} -w ' %{{http_code}}'", &printed[start..end]))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.ends_with(" 202"),
        "the printed curl did not get a 202: {out}"
    );
    let resp: Value = serde_json::from_str(out.trim_end_matches(" 202")).unwrap();
    let incident = resp["alerts"][0]["incidentId"].as_str().unwrap().to_owned();

    // The incident shows in the API and in `incidents list`.
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list: Value = client
            .get(format!("http://{addr}/v1/tenants/demo/incidents"))
            .header("x-api-key", &api_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if list["incidents"][0]["incidentId"] == incident.as_str() {
            break;
        }
        assert!(Instant::now() < deadline, "incident not listed: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = cli(&db, &["incidents", "list", "--tenant", "demo"]);
    assert!(
        listed.contains(&incident) && listed.contains("open"),
        "{listed}"
    );

    // The printed console link signs a browser in to `demo`, once.
    let link = printed
        .split_whitespace()
        .find(|w| w.contains("/console/signin?token="))
        .unwrap_or_else(|| panic!("no console link printed: {printed}"))
        .to_owned();
    assert!(
        link.starts_with(&format!("http://{addr}/console/signin?token=")),
        "{link}"
    );
    let token = link.split_once("token=").unwrap().1;
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let sign_in = || async {
        no_redirect
            .post(format!("http://{addr}/console/signin"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(sign_in().await, 303);
    assert_eq!(sign_in().await, 401);

    // A second start does not create another demo key.
    signal(&child, libc::SIGINT);
    assert!(wait_exit(&mut child).success(), "Ctrl-C exits cleanly");
    let (mut child, _, printed) = serve_with(&db, &[], true);
    assert!(!printed.contains("API key:"), "{printed}");
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_without_a_terminal_prints_no_secret_and_says_how_to_get_a_key() {
    let db = db_path();
    // stdout is a pipe, as under systemd or Docker, where it ends up in the log.
    let (mut child, _, printed) = serve(&db, &[]);
    assert!(
        !printed.contains("cf_") && !printed.contains("Webhook secret"),
        "{printed}"
    );
    assert!(
        !printed.contains("token="),
        "a sign-in link went to a log: {printed}"
    );
    assert!(
        printed.contains("causeflow keys create --tenant demo"),
        "{printed}"
    );
    let keys = cli(&db, &["keys", "list", "--tenant", "demo", "--json"]);
    assert_eq!(keys.trim(), "[]", "no key was made that nobody has seen");
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child).success());
}

#[test]
fn database_files_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let db = db_path();
    create_key(&db, "acme");
    let (mut child, _, _) = serve(&db, &[]);
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", db.display()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
    }
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child).success());
    // A file left readable by an older version is tightened on the next open.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    cli(&db, &["keys", "list", "--tenant", "acme"]);
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// Exit status and stderr of a `serve` that must refuse to start.
fn serve_refuses(extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["serve", "--addr", "127.0.0.1:0", "--db"])
        .arg(db_path())
        .args(extra)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve {extra:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn settings_that_cannot_work_are_refused_at_start() {
    for (flags, says) in [
        (&["--rate-limit", "1e-300"][..], "rate limit"),
        (&["--rate-limit", "NaN"][..], "rate limit"),
        (
            &["--rate-limit", "10", "--rate-burst", "0"][..],
            "rate burst",
        ),
        (&["--max-alerts", "0"][..], "--max-alerts"),
        (&["--header-timeout", "0s"][..], "--header-timeout"),
        (&["--request-timeout", "9999h"][..], "--request-timeout"),
        (&["--max-connections", "0"][..], "--max-connections"),
        (&["--dedup-ttl-hours", "0"][..], "--dedup-ttl-hours"),
        (&["--agent-webhook", "ftp://x"][..], "--agent-webhook"),
    ] {
        let err = serve_refuses(flags);
        assert!(err.contains(says), "{flags:?}: {err}");
    }
}

/// `causeflow serve` started with a soft open-files limit of `soft` under a hard limit of `hard`.
#[allow(clippy::zombie_processes)]
fn serve_with_fd_limit(db: &Path, soft: u64, hard: u64, extra: &[&str]) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = serve_command(db, extra);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

/// The `listening on http://…` address a started serve prints.
fn listening_addr(child: &mut Child) -> String {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "serve exited early");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            std::thread::spawn(move || for _ in out.lines() {});
            return rest.split_whitespace().next().unwrap().to_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_files_limit_is_raised_and_the_cap_keeps_below_it() {
    let db = db_path();
    let key = create_key(&db, "acme");
    // The soft limit is raised to the hard one at start.
    let mut child = serve_with_fd_limit(&db, 256, 4096, &[]);
    listening_addr(&mut child);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    assert_eq!(line.split_whitespace().nth(3), Some("4096"), "{line}");
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child).success());

    // A cap the limit cannot hold is refused with what to do.
    let mut child = serve_with_fd_limit(&db, 100, 100, &["--max-connections", "1000"]);
    assert!(!wait_exit(&mut child).success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("--max-connections") && err.contains("ulimit"),
        "{err}"
    );

    // With few descriptors, the default cap shrinks to fit: a flood of idle connections waits
    // in the backlog instead of exhausting descriptors, and once it goes, senders get through.
    let mut child = serve_with_fd_limit(&db, 100, 100, &["--header-timeout", "60s"]);
    let addr = listening_addr(&mut child);
    let mut flood = Vec::new();
    // Well beyond the cap (36 here), within the listen backlog.
    for _ in 0..100 {
        flood.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    drop(flood);
    let client = reqwest::Client::new();
    let r = post(
        &client,
        &addr,
        "acme",
        &key,
        r#"{"sourceAlertId":"fd","title":"x"}"#,
    )
    .await;
    assert_eq!(r.status(), 202);
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_managed_while_serving_take_effect_at_once() {
    let db = db_path();
    let first = create_key(&db, "acme");
    for f in ["tenantId", "keyId", "apiKey", "webhookSecret"] {
        assert!(
            first[f].as_str().is_some_and(|v| !v.is_empty()),
            "{f} missing: {first}"
        );
    }
    let (mut child, addr, _) = serve(&db, &[]);
    let client = reqwest::Client::new();

    let second = create_key(&db, "acme");
    assert_eq!(
        post(
            &client,
            &addr,
            "acme",
            &second,
            r#"{"sourceAlertId":"k1","title":"x"}"#
        )
        .await
        .status(),
        202
    );

    let listed = cli(&db, &["keys", "list", "--tenant", "acme", "--json"]);
    let keys: Vec<Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(keys.len(), 2);
    for secret in [
        &first["apiKey"],
        &first["webhookSecret"],
        &second["apiKey"],
        &second["webhookSecret"],
    ] {
        assert!(
            !listed.contains(secret.as_str().unwrap()),
            "keys list must not print keys or secrets"
        );
    }

    let kid = second["keyId"].as_str().unwrap();
    cli(&db, &["keys", "revoke", "--tenant", "acme", "--key", kid]);
    assert_eq!(
        post(
            &client,
            &addr,
            "acme",
            &second,
            r#"{"sourceAlertId":"k2","title":"x"}"#
        )
        .await
        .status(),
        401
    );

    // Rotation: old and new secrets verify until the old one is retired.
    let fid = first["keyId"].as_str().unwrap();
    let rotated: Value = serde_json::from_str(&cli(
        &db,
        &[
            "keys",
            "rotate-secret",
            "--tenant",
            "acme",
            "--key",
            fid,
            "--json",
        ],
    ))
    .unwrap();
    let mut with_new = first.clone();
    with_new["webhookSecret"] = rotated["webhookSecret"].clone();
    assert_eq!(
        post(
            &client,
            &addr,
            "acme",
            &first,
            r#"{"sourceAlertId":"r1","title":"x"}"#
        )
        .await
        .status(),
        202
    );
    assert_eq!(
        post(
            &client,
            &addr,
            "acme",
            &with_new,
            r#"{"sourceAlertId":"r2","title":"x"}"#
        )
        .await
        .status(),
        202
    );
    cli(
        &db,
        &["keys", "retire-secret", "--tenant", "acme", "--key", fid],
    );
    assert_eq!(
        post(
            &client,
            &addr,
            "acme",
            &first,
            r#"{"sourceAlertId":"r3","title":"x"}"#
        )
        .await
        .status(),
        401
    );
    assert_eq!(
        post(
            &client,
            &addr,
            "acme",
            &with_new,
            r#"{"sourceAlertId":"r4","title":"x"}"#
        )
        .await
        .status(),
        202
    );

    // Sentry client secret, registered from standard input.
    let mut c = Command::new(BIN)
        .args([
            "keys",
            "set-sentry-secret",
            "--tenant",
            "acme",
            "--key",
            fid,
            "--secret",
            "-",
            "--db",
        ])
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(b"sentry-secret\n")
        .unwrap();
    assert!(c.wait().unwrap().success());
    let body = r#"{"action":"created","data":{"issue":{"id":"5","title":"E","level":"error"}}}"#;
    let r = client
        .post(format!("http://{addr}/v1/webhooks/acme/sentry"))
        .header("content-type", "application/json")
        .header("x-api-key", first["apiKey"].as_str().unwrap())
        .header("sentry-hook-resource", "issue")
        .header(
            "sentry-hook-signature",
            sign("sentry-secret", &[body.as_bytes()]),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // Management errors are clear, not panics.
    let out = Command::new(BIN)
        .args([
            "keys", "revoke", "--tenant", "acme", "--key", "key_nope", "--db",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no active key"));
    let out = Command::new(BIN)
        .args([
            "keys",
            "create",
            "--tenant",
            "Bad Tenant!",
            "--name",
            "x",
            "--db",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tenant id"));

    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child).success());
}

#[test]
fn sign_prints_the_headers_to_send() {
    let body = br#"{"sourceAlertId":"a","title":"b"}"#;
    let run = |args: &[&str]| {
        let mut c = Command::new(BIN)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(body).unwrap();
        String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap()
    };
    assert_eq!(
        run(&["sign", "--secret", "s3"]),
        format!("X-Webhook-Signature: {}\n", sign("s3", &[body]))
    );
    assert_eq!(
        run(&["sign", "--secret", "s3", "--timestamp", "1800000000"]),
        format!(
            "X-Webhook-Signature: {}\nX-Webhook-Timestamp: 1800000000\n",
            sign("s3", &[b"1800000000:", body])
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_alerts_survive_sigkill_and_get_triaged() {
    let db = db_path();
    let key = create_key(&db, "acme");
    let (mut child, addr, _) = serve(&db, &[]);
    let client = reqwest::Client::new();

    // Fire distinct alerts from 16 concurrent senders; SIGKILL the server as soon as 150 are
    // acknowledged, while requests are still in flight.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut senders = Vec::new();
    for w in 0..16 {
        let (client, addr, key, acked) = (client.clone(), addr.clone(), key.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            for i in 0..40 {
                let body = json!({"sourceAlertId": format!("kill-{w}-{i}"), "title": "durable?", "severity": "high"}).to_string();
                let r = client
                    .post(format!("http://{addr}/v1/webhooks/acme/generic"))
                    .header("content-type", "application/json")
                    .header("x-api-key", key["apiKey"].as_str().unwrap())
                    .header("x-webhook-signature", sign(key["webhookSecret"].as_str().unwrap(), &[body.as_bytes()]))
                    .body(body)
                    .send()
                    .await;
                let Ok(r) = r else { return };
                if r.status() != 202 {
                    return;
                }
                let Ok(v) = r.json::<Value>().await else { return };
                acked.lock().unwrap().push(v["alerts"][0]["incidentId"].as_str().unwrap().to_owned());
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 150 {
        assert!(Instant::now() < deadline, "too slow to acknowledge");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    signal(&child, libc::SIGKILL);
    wait_exit(&mut child);
    for s in senders {
        let _ = s.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 150);

    // Every acknowledged alert is on disk: a dedup record and either a queued message or an incident.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let dedup: i64 = conn
        .query_row("SELECT count(*) FROM dedup", [], |r| r.get(0))
        .unwrap();
    assert!(
        dedup as usize >= acked.len(),
        "{dedup} dedup records for {} acknowledged alerts",
        acked.len()
    );
    let untriaged: i64 = conn
        .query_row("SELECT count(*) FROM queue", [], |r| r.get(0))
        .unwrap();
    eprintln!(
        "after SIGKILL: {} acknowledged, {untriaged} still queued for triage",
        acked.len()
    );
    // serve triages each alert in the commit that acknowledges it: every acknowledged alert's
    // incident is on disk already.
    let mut recorded = conn
        .prepare("SELECT count(*) FROM incidents WHERE incident_id = ?1")
        .unwrap();
    for id in &acked {
        let n: i64 = recorded.query_row([id], |r| r.get(0)).unwrap();
        assert_eq!(
            n, 1,
            "acknowledged incident {id} is not on disk after SIGKILL"
        );
    }
    drop(recorded);
    drop(conn);

    // After a restart every acknowledged alert is triaged.
    let (mut child, addr, _) = serve(&db, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &acked {
        loop {
            let r = client
                .get(format!("http://{addr}/v1/tenants/acme/incidents/{id}"))
                .header("x-api-key", key["apiKey"].as_str().unwrap())
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                let inc: Value = r.json().await.unwrap();
                assert_eq!(inc["agents"], json!(["logs", "metrics", "deploys"]));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "acknowledged incident {id} never triaged after restart"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child).success());
}

/// `causeflow serve` at log level `level`, its stderr (the log) going to the file `log`, and
/// the address it listens on.
#[allow(clippy::zombie_processes)]
fn serve_logging_to(db: &Path, log: &Path, level: &str, extra: &[&str]) -> (Child, String) {
    let mut child = serve_command(db, extra)
        .env("RUST_LOG", level)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let addr = listening_addr(&mut child);
    (child, addr)
}

/// docs/operations.md#metrics-and-request-ids: off a terminal, `serve` writes plain lines in
/// tracing's usual layout (time, level, the request's span with its id, tenant and provider, the
/// module, the message, the fields), one event a line, and an orderly stop writes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_plain_lines_to_a_file_and_writes_them_all_when_stopped() {
    let db = db_path();
    let key = create_key(&db, "acme");
    let log = db.with_file_name("serve.log");
    let (mut child, addr) = serve_logging_to(&db, &log, "info", &[]);
    let client = reqwest::Client::new();
    let body = r#"{"sourceAlertId":"plain-lines","title":"t"}"#;
    assert_eq!(post(&client, &addr, "acme", &key, body).await.status(), 202);
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child).success());

    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(!logs.contains('\u{1b}'), "no colour off a terminal: {logs}");
    for line in logs.lines() {
        let stamp = line.split(' ').next().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
            "every line is an event of its own, starting with its time: {line:?}"
        );
    }
    let accepted = logs
        .lines()
        .find(|l| l.contains("webhook accepted"))
        .unwrap_or_else(|| panic!("the request's line is written: {logs}"));
    assert!(
        accepted.contains("  INFO request{request_id=")
            && accepted.contains(" tenant=acme}: causeflow_shared::http::admission: webhook accepted alerts=1 created=1"),
        "{accepted}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains(" INFO causeflow_shared::triage: triaged tenant=acme ")),
        "the triage line is written: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_stored_hashed_and_nothing_secret_reaches_the_logs() {
    let db = db_path();
    let key = create_key(&db, "acme");
    let log = db.with_file_name("serve.log");
    let (mut child, addr) = serve_logging_to(&db, &log, "trace", &["--log-format", "json"]);
    let client = reqwest::Client::new();
    let body = r#"{"sourceAlertId":"leak-check","title":"TITLE-MUST-NOT-BE-LOGGED","message":"BODY-MUST-NOT-BE-LOGGED"}"#;
    assert_eq!(post(&client, &addr, "acme", &key, body).await.status(), 202);
    let mut bad = key.clone();
    bad["webhookSecret"] = json!("wrong-secret-value");
    assert_eq!(post(&client, &addr, "acme", &bad, body).await.status(), 401);
    // No wait needed: the alert was triaged before its 202, and the stop writes every line.
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child).success());

    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("webhook accepted"),
        "the log is written: {logs}"
    );
    for line in logs.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "--log-format json writes one JSON object a line: {line:?}"
        );
    }
    for secret in [
        key["apiKey"].as_str().unwrap(),
        key["webhookSecret"].as_str().unwrap(),
        "BODY-MUST-NOT-BE-LOGGED",
        "TITLE-MUST-NOT-BE-LOGGED",
    ] {
        assert!(!logs.contains(secret), "{secret} appears in the log");
    }
    // The database holds the key's SHA-256, never the key itself.
    let mut raw = Vec::new();
    for suffix in ["", "-wal"] {
        if let Ok(b) = std::fs::read(format!("{}{suffix}", db.display())) {
            raw.extend(b);
        }
    }
    let raw = String::from_utf8_lossy(&raw);
    assert!(!raw.contains(key["apiKey"].as_str().unwrap()));
    assert!(raw.contains(&causeflow_shared::auth::hash_api_key(
        key["apiKey"].as_str().unwrap()
    )));
}

#[test]
fn dead_letters_are_listed_and_redriven() {
    let db = db_path();
    create_key(&db, "acme"); // creates the database
    let alert = json!({"tenantId": "acme", "provider": "generic", "incidentId": "inc_dead",
        "receivedAt": "2026-11-28T00:00:00Z",
        "alert": {"sourceAlertId": "dl-1", "status": "firing", "title": "stuck", "severity": "high"}});
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        for body in [alert.to_string(), "{\"not\": \"an alert\"}".to_owned()] {
            c.execute(
                "INSERT INTO dead_letters(body, receive_count, enqueued_at, dead_at) VALUES (?1, 5, 0, 1764288000000)",
                [body],
            )
            .unwrap();
        }
    }
    let listed: Value =
        serde_json::from_str(&cli(&db, &["dead-letters", "list", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(listed[0]["alert"]["alert"]["sourceAlertId"], "dl-1");
    assert_eq!(listed[0]["receiveCount"], 5);
    let text = cli(&db, &["dead-letters", "list"]);
    assert!(
        text.contains("dl-1") && text.contains("(not a queued alert)"),
        "{text}"
    );
    // Redriving everything: the alert is admitted again; the other is left, and said so.
    let out = Command::new(BIN)
        .args(["dead-letters", "redrive", "--json", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a letter was left, so the command says so"
    );
    let redriven: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Queued again under its own incident id, which takes the free key back.
    assert_eq!(redriven[0]["result"]["outcome"], "created", "{redriven}");
    assert_eq!(redriven[0]["result"]["incidentId"], "inc_dead");
    assert!(redriven[1]["error"]
        .as_str()
        .unwrap()
        .contains("not a queued alert"));
    let c = rusqlite::Connection::open(&db).unwrap();
    let count = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("SELECT count(*) FROM dead_letters"), 1);
    assert_eq!(
        count("SELECT count(*) FROM queue"),
        1,
        "queued for triage again"
    );
    assert_eq!(
        count("SELECT count(*) FROM dedup WHERE source_alert_id = 'dl-1'"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_link_signs_in_once_and_sessions_revoke_signs_out() {
    let db = db_path();
    create_key(&db, "acme");
    let (mut child, addr, _) = serve(&db, &[]);
    let out = Command::new(BIN)
        .args([
            "console-link",
            "--tenant",
            "acme",
            "--ttl",
            "5m",
            "--public-url",
        ])
        .arg(format!("http://{addr}"))
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(String::from_utf8_lossy(&out.stderr).contains("5 min"));
    let token = link.split_once("token=").unwrap().1.to_owned();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http
        .post(format!("http://{addr}/console/signin"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = || async {
        http.get(format!("http://{addr}/console/t/acme/incidents"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(page().await, 200);
    let revoked = cli(&db, &["sessions", "revoke", "--tenant", "acme"]);
    assert!(
        revoked.contains("signed out 1 console session"),
        "{revoked}"
    );
    assert_eq!(page().await, 401);
    // Bad settings are refused with a message, not a link.
    for args in [
        &["console-link", "--tenant", "acme", "--ttl", "25h"][..],
        &["console-link", "--tenant", "Not Valid"][..],
        &[
            "console-link",
            "--tenant",
            "acme",
            "--public-url",
            "ftp://x",
        ][..],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .arg("--db")
            .arg(&db)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child).success());
}
