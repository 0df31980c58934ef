//! `scripts/local-stack` as a user runs it: it comes up, the commands it prints work as printed
//! (an event fixture through the ingest function ends as incidents and agent tasks, triage fed
//! from the queue by the pump), a PagerDuty sender reaches the function URL, and Ctrl-C stops
//! every process it started.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Processes whose command line or environment names one of `ports` (the stack's parts and the
/// functions cargo-lambda started, which get `AWS_LAMBDA_RUNTIME_API=127.0.0.1:<port>`).
fn leftovers(ports: &[u16]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if pid.parse::<u32>().is_err() || pid == std::process::id().to_string() {
            continue;
        }
        let read = |f: &str| std::fs::read(entry.path().join(f)).unwrap_or_default();
        let text = String::from_utf8_lossy(&[read("cmdline"), read("environ")].concat())
            .replace('\0', " ");
        if ports
            .iter()
            .any(|p| text.contains(&format!("127.0.0.1:{p}")) || text.contains(&format!("-p {p}")))
        {
            found.push(format!(
                "{pid}: {}",
                String::from_utf8_lossy(&read("cmdline")).replace('\0', " ")
            ));
        }
    }
    found
}

/// The running script: stopped with SIGTERM (which its trap turns into stopping everything) if
/// the test ends early, passed or not, and only while it has not exited.
struct Script(std::process::Child);

impl Drop for Script {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            unsafe {
                libc::kill(self.0.id() as i32, libc::SIGTERM);
            }
            let _ = self.0.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_stack_runs_the_lambda_functions_and_stops_on_ctrl_c() {
    // Three distinct free ports (the script refuses equal ones).
    let mut ports = std::collections::BTreeSet::new();
    while ports.len() < 3 {
        ports.insert(free_port());
    }
    let ports: Vec<u16> = ports.into_iter().collect();
    let (moto, ingest, triage) = (ports[0], ports[1], ports[2]);
    let state = causeflow_shared::testing::tempdir().join("local-stack");
    let state_dir = state.to_str().unwrap().to_owned();
    let mut command = Command::new(format!("{ROOT}/scripts/local-stack"));
    command
        .current_dir(ROOT)
        .env("MOTO_PORT", moto.to_string())
        .env("INGEST_PORT", ingest.to_string())
        .env("TRIAGE_PORT", triage.to_string())
        .env("LOCAL_STACK_STATE", &state_dir)
        // This test's own binary, so the script builds nothing.
        .env("CAUSEFLOW_BIN", env!("CARGO_BIN_EXE_causeflow"))
        // The suite's own emulator is not this stack's.
        .env_remove("AWS_ENDPOINT_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Its own process group, as a script started from a terminal has.
        .process_group(0);
    // Ctrl-C must reach it even when this suite was started where SIGINT is ignored (a
    // background job of a script): a shell cannot trap a signal ignored on entry.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut script = Script(command.spawn().expect("run scripts/local-stack"));
    let stdout = script.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });

    // Up within a bound that covers building the functions from cold.
    let deadline = Instant::now() + Duration::from_secs(30 * 60);
    let mut printed = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains("Ctrl-C stops everything");
                printed.push(line);
                if done {
                    break;
                }
            }
            Err(e) => {
                panic!(
                    "scripts/local-stack did not come up ({e:?}); printed:\n{}",
                    printed.join("\n")
                );
            }
        }
    }
    assert!(
        printed.iter().any(|l| l.contains("stack is up")),
        "{printed:?}"
    );

    // The commands it printed, run as printed.
    let at = printed
        .iter()
        .position(|l| l.starts_with("Send an event"))
        .expect("it prints what to run next");
    let commands: Vec<&str> = printed[at + 1..]
        .iter()
        .map(|l| l.trim())
        .take_while(|l| !l.starts_with("Ctrl-C"))
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(commands.len(), 3, "{commands:?}");
    let run = |script: String| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(ROOT)
            .env_remove("AWS_ENDPOINT_URL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let invoked = run(commands[0].to_owned());
    assert!(invoked.contains(r#""statusCode":202"#), "{invoked}");

    // A PagerDuty sender through the function URL, the key in routing_key.
    let event: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/events/webhook-pagerduty-trigger.json")).unwrap(),
    )
    .unwrap();
    let r = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{ingest}/lambda-url/ingest/v1/webhooks/demo/pagerduty"
        ))
        .header("content-type", "application/json")
        .body(event["body"].as_str().unwrap().to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // events/README.md's commands, as written but for the ports.
    let readme = std::fs::read_to_string(format!("{ROOT}/events/README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .find(|b| b.starts_with(".venv/bin/cargo-lambda lambda invoke"))
        .and_then(|b| b.split("```").next())
        .expect("events/README.md shows the local-stack commands");
    let commands_block = block
        .replace("-P 9000", &format!("-P {ingest}"))
        .replace("-P 9001", &format!("-P {triage}"))
        .replace("target/local-stack", &state_dir);
    let out = run(format!("set -e\n{commands_block}"));
    // Triage answers the poison record of sqs-triage.json, and only it, as a batch item failure.
    assert!(
        out.contains(
            r#"{"batchItemFailures":[{"itemIdentifier":"497199bc-fcba-4cc7-a40f-644e129cb047"}]}"#
        ),
        "{out}"
    );

    // Triage runs from the queue: the Grafana notification's three incidents, PagerDuty's one,
    // and the two of events/sqs-triage.json, with their agents' tasks published.
    let list = format!("{} && {} --json", commands[1], commands[2]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let listed: Vec<serde_json::Value> = serde_json::from_str(&run(list.clone())).unwrap();
        let with_agents = listed
            .iter()
            .filter(|i| !i["agents"].as_array().unwrap().is_empty())
            .count();
        if listed.len() == 6 && with_agents == 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "triage did not record the incidents: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The pump says what it did once its deletes are done.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(state.join("pump.log"))
        .unwrap_or_default()
        .contains("triaged")
    {
        assert!(
            Instant::now() < deadline,
            "the pump logged no triaged batch"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each agent task was published once: its marker is in the dispatch table.
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(format!("http://127.0.0.1:{moto}"))
        .region(aws_config::Region::new("eu-west-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await;
    let agents: usize = serde_json::from_str::<Vec<serde_json::Value>>(&run(list.clone()))
        .unwrap()
        .iter()
        .map(|i| i["agents"].as_array().unwrap().len())
        .sum();
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let markers = ddb
            .scan()
            .table_name("DispatchTable-local")
            .send()
            .await
            .unwrap()
            .count as usize;
        if markers == agents {
            break;
        }
        assert!(
            Instant::now() < deadline && markers < agents,
            "{markers} tasks published, {agents} agents: one task per agent"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Ctrl-C stops everything it started.
    unsafe {
        libc::kill(script.0.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while script.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "scripts/local-stack ignored Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open: Vec<u16> = [moto, ingest, triage]
            .into_iter()
            .filter(|p| listening(*p))
            .collect();
        let left = leftovers(&[moto, ingest, triage]);
        if open.is_empty() && left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running after Ctrl-C: ports {open:?}, processes {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
