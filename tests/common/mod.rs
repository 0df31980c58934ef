//! Test harness: a real `causeflow serve` stack (SQLite file, HTTP over loopback, triage worker)
//! started in-process per test, plus request helpers.
#![allow(dead_code)]

#[cfg(feature = "aws")]
pub mod aws;
pub mod sns_signing;

use std::time::{Duration, Instant};

use causeflow_shared::auth::sign;
use causeflow_shared::host::embedded::{Embedded, EmbeddedConfig};
use causeflow_shared::http::RateLimit;
use causeflow_shared::model::Incident;
use causeflow_shared::ports::IncidentStore;
use causeflow_shared::ports::KeyAdmin;
use serde_json::Value;
use tokio::sync::oneshot;

/// Polls `check` until it gives a value, failing the test with `what` after 10 s: a state
/// waited for, with a bound so a broken server fails instead of hanging the suite.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh, empty directory, removed when the test process exits
/// ([`causeflow_shared::testing`]).
pub use causeflow_shared::testing::tempdir;

/// A running server with one tenant and key.
pub struct Server {
    pub base: String,
    pub app: Embedded,
    pub tenant: String,
    pub key_id: String,
    pub api_key: String,
    pub secret: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut EmbeddedConfig)) -> Server {
        Self::start_full(tweak, None).await
    }

    /// With the HTTPS client (SNS certificates, subscription confirmations) injected.
    pub async fn start_full(
        tweak: impl FnOnce(&mut EmbeddedConfig),
        https: Option<std::sync::Arc<dyn causeflow_shared::sns::HttpsGet>>,
    ) -> Server {
        let mut config = EmbeddedConfig::new(tempdir().join("causeflow.db"));
        config.rate_limit = RateLimit {
            per_sec: 0.0,
            burst: 0.0,
        };
        tweak(&mut config);
        let app = match https {
            Some(h) => Embedded::open_with(config, h).unwrap(),
            None => Embedded::open(config).unwrap(),
        };
        let key = app.directory.create_key("acme", "test").await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let runner = app.clone();
        let task = tokio::spawn(async move {
            runner
                .run(listener, async move {
                    let _ = stopped.await;
                })
                .await
        });
        Server {
            base,
            app,
            tenant: "acme".into(),
            key_id: key.key_id,
            api_key: key.api_key,
            secret: key.webhook_secret,
            client: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Graceful shutdown, as Ctrl-C does.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }

    pub fn webhook_url(&self, provider: &str) -> String {
        format!("{}/v1/webhooks/{}/{}", self.base, self.tenant, provider)
    }

    /// POSTs `body` with the key and, when `signed`, X-Webhook-Signature.
    pub async fn post(
        &self,
        provider: &str,
        body: &[u8],
        signed: bool,
        extra: &[(&str, &str)],
    ) -> Resp {
        let mut req = self
            .client
            .post(self.webhook_url(provider))
            .header("content-type", "application/json")
            .header("x-api-key", &self.api_key);
        if signed {
            req = req.header("x-webhook-signature", sign(&self.secret, &[body]));
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        Resp::from(req.body(body.to_vec()).send().await.unwrap()).await
    }

    /// POSTs `body` as JSON with exactly `headers`: no key or signature added.
    pub async fn post_exact(&self, provider: &str, body: &[u8], headers: &[(&str, &str)]) -> Resp {
        let mut req = self
            .client
            .post(self.webhook_url(provider))
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Resp::from(req.body(body.to_vec()).send().await.unwrap()).await
    }

    /// A signed generic alert.
    pub async fn generic(&self, id: &str, status: &str) -> Resp {
        let body = serde_json::json!({"sourceAlertId": id, "title": format!("alert {id}"), "status": status, "severity": "high"});
        self.post("generic", body.to_string().as_bytes(), true, &[])
            .await
    }

    /// Waits (bounded) until triage has recorded the incident and `ready` holds for it.
    pub async fn wait_incident(
        &self,
        incident_id: &str,
        ready: impl Fn(&Incident) -> bool,
    ) -> Incident {
        eventually(&format!("incident {incident_id} triaged"), || async {
            self.app
                .incidents
                .get(&self.tenant, incident_id)
                .await
                .unwrap()
                .filter(|i| ready(i))
        })
        .await
    }

    /// Rows in the dedup table.
    pub async fn dedup_rows(&self) -> i64 {
        self.app
            .db
            .read(|c| Ok(c.query_row("SELECT count(*) FROM dedup", [], |r| r.get(0))?))
            .await
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A response with its body read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Resp {
    pub async fn from(r: reqwest::Response) -> Resp {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            json,
            text,
        }
    }

    pub fn code(&self) -> &str {
        self.json["code"].as_str().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The first alert's incident id.
    pub fn incident_id(&self) -> String {
        self.json["alerts"][0]["incidentId"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Every alert's outcome, in order.
    pub fn outcomes(&self) -> Vec<&str> {
        self.json["alerts"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["outcome"].as_str()).collect())
            .unwrap_or_default()
    }

    pub fn outcome(&self) -> &str {
        self.json["alerts"][0]["outcome"].as_str().unwrap_or("")
    }

    /// Asserts the status and that errors are problem+json with a detail.
    pub fn expect(&self, status: u16) -> &Self {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        if status >= 400 {
            assert_eq!(
                self.header("content-type"),
                "application/problem+json",
                "{}",
                self.text
            );
            assert!(
                self.json["detail"].as_str().is_some_and(|d| d.len() > 10),
                "problem without a useful detail: {}",
                self.text
            );
            assert_eq!(self.json["status"], status);
        }
        self
    }
}
