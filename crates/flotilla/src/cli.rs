//! The command-line client. It talks to the server only through the HTTP
//! API and its shared request and response types.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use flotilla_api_types::{ClusterList, ClusterStatus, DeployRequest, ErrorBody};
use reqwest::StatusCode;

/// Exit statuses of `product.md`.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const DENIED: u8 = 3;
    pub const UNREACHABLE: u8 = 4;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

pub struct Client {
    server: String,
    http: reqwest::Client,
    output: Output,
}

/// A failure with the exit status it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

type Result<T> = std::result::Result<T, Failure>;

impl Client {
    pub fn new(server: &str, output: Output) -> Result<Self> {
        let server = server.trim_end_matches('/').to_owned();
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(Failure::new(
                exit::USAGE,
                format!("--server {server:?} must start with http:// or https://"),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Failure::new(exit::FAILED, format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            server,
            http,
            output,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(T, String)> {
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                Failure::new(
                    exit::UNREACHABLE,
                    format!("cannot reach the flotilla server at {}: {e}; is `flotilla serve` running? (set --server or FLOTILLA_SERVER)", self.server),
                )
            } else {
                Failure::new(exit::UNREACHABLE, format!("request to {} failed: {e}", self.server))
            }
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| {
            Failure::new(
                exit::UNREACHABLE,
                format!("reading the server's answer failed: {e}"),
            )
        })?;
        if !status.is_success() {
            let message = match serde_json::from_str::<ErrorBody>(&text) {
                Ok(b) => format!("{} ({})", b.message, b.error),
                Err(_) => format!("server answered {status}: {}", text.trim()),
            };
            let code = match status {
                StatusCode::BAD_REQUEST
                | StatusCode::UNPROCESSABLE_ENTITY
                | StatusCode::PAYLOAD_TOO_LARGE => exit::USAGE,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => exit::DENIED,
                _ => exit::FAILED,
            };
            if self.output == Output::Json {
                println!("{}", text.trim());
            }
            return Err(Failure::new(code, message));
        }
        let value = serde_json::from_str(&text)
            .map_err(|e| Failure::new(exit::FAILED, format!("the server's answer is not what this client expects ({e}); are client and server the same version?")))?;
        Ok((value, text))
    }

    pub async fn deploy(&self, cluster: &str, request: DeployRequest, wait: bool) -> Result<u8> {
        let req = self
            .http
            .put(self.url(&format!("/api/v1/clusters/{cluster}")))
            .query(&[("wait", wait)])
            .json(&request);
        self.change(cluster, req, wait).await
    }

    pub async fn destroy(&self, cluster: &str, wait: bool) -> Result<u8> {
        let req = self
            .http
            .delete(self.url(&format!("/api/v1/clusters/{cluster}")))
            .query(&[("wait", wait)]);
        self.change(cluster, req, wait).await
    }

    /// Sends a deploy or destroy, showing progress while it waits, and
    /// prints the resulting status.
    async fn change(&self, cluster: &str, req: reqwest::RequestBuilder, wait: bool) -> Result<u8> {
        let progress = wait.then(|| self.progress(cluster));
        let result = self.send::<ClusterStatus>(req).await;
        if let Some(p) = progress {
            p.finish().await;
        }
        let (status, raw) = result?;
        self.print_status(&status, &raw);
        Ok(self.settled_exit(&status))
    }

    pub async fn status(&self, cluster: Option<&str>) -> Result<u8> {
        match cluster {
            Some(c) => {
                let (status, raw) = self
                    .send::<ClusterStatus>(
                        self.http.get(self.url(&format!("/api/v1/clusters/{c}"))),
                    )
                    .await?;
                self.print_status(&status, &raw);
            }
            None => {
                let (list, raw) = self
                    .send::<ClusterList>(self.http.get(self.url("/api/v1/clusters")))
                    .await?;
                match self.output {
                    Output::Json => println!("{}", raw.trim()),
                    Output::Text if list.clusters.is_empty() => println!("no clusters"),
                    Output::Text => {
                        for s in &list.clusters {
                            println!("{}", summary_line(s));
                        }
                    }
                }
            }
        }
        Ok(exit::OK)
    }

    fn settled_exit(&self, status: &ClusterStatus) -> u8 {
        if status.settled == Some(false) {
            if self.output == Output::Text {
                eprintln!(
                    "{} did not settle before the server's max_wait; it is still {}",
                    status.cluster,
                    status.state.as_str()
                );
            }
            exit::FAILED
        } else {
            exit::OK
        }
    }

    fn print_status(&self, s: &ClusterStatus, raw: &str) {
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                println!("{}", summary_line(s));
                for n in &s.nodes {
                    println!(
                        "  {:<24} {:<13} {:<22} {:<14} launched {}",
                        n.id,
                        n.state.as_str(),
                        n.address.as_deref().unwrap_or("-"),
                        n.instance_type,
                        n.launched_at.format("%Y-%m-%dT%H:%M:%SZ")
                    );
                }
            }
        }
    }

    /// While a waiting request runs, shows "ready / wanted" on a terminal.
    fn progress(&self, cluster: &str) -> Progress {
        if self.output != Output::Text || !std::io::stderr().is_terminal() {
            return Progress { task: None };
        }
        let url = self.url(&format!("/api/v1/clusters/{cluster}"));
        let http = self.http.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(resp) = http.get(&url).send().await {
                    if let Ok(s) = resp.json::<ClusterStatus>().await {
                        eprint!(
                            "\r\x1b[K{}: {}, {}/{} nodes ready",
                            s.cluster,
                            s.state.as_str(),
                            s.ready_nodes(),
                            s.node_capacity
                        );
                        let _ = std::io::stderr().flush();
                    }
                }
            }
        });
        Progress { task: Some(task) }
    }
}

struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    async fn finish(self) {
        if let Some(t) = self.task {
            t.abort();
            let _ = t.await;
            eprint!("\r\x1b[K");
        }
    }
}

fn summary_line(s: &ClusterStatus) -> String {
    let mut line = format!(
        "{:<20} {:<12} {}/{} ready",
        s.cluster,
        s.state.as_str(),
        s.ready_nodes(),
        s.node_capacity
    );
    if s.is_public {
        line.push_str("  public");
    }
    if let Some(p) = &s.pool {
        line.push_str(&format!("  pool {p}"));
    }
    if let Some(at) = s.expires_at {
        line.push_str(&format!("  expires {}", at.format("%Y-%m-%dT%H:%M:%SZ")));
    }
    line
}

/// Parses `--ttl` ("90s", "10m", "2h", or plain seconds).
pub fn parse_ttl(s: &str) -> std::result::Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{e}; use a duration such as 90s, 10m or 2h"))
}
