//! The command-line client. It talks to the server only through the HTTP
//! API and its shared request and response types, with credentials found
//! as `credentials` describes.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use chrono::{DateTime, Utc};
use flotilla_api_types::{
    CapacityRequest, CapacityResponse, ClusterList, ClusterStatus, ClusterTokenResponse, Costs,
    CreateOrgRequest, CreateUserRequest, CreditRequest, DeliveryList, DeliveryView, DeployRequest,
    ErrorBody, Event, EventList, ExecRequest, ExecResponse, ExtendRequest, GithubLoginRequest,
    JobList, JobView, Ledger, Level, LoginRequest, MemberRoleRequest, MembershipRequestResponse,
    NodeLogs, OrgClusterStatus, OrgList, OrgView, PoolApplied, PoolDetail, PoolErrorList,
    PoolHistory, PoolList, PoolRollout, PoolTypeView, PoolVersion, PoolView, RefreshRequest,
    RunTemplateRequest, ScheduleList, ScheduleRequest, ScheduleView, SchemaIndex, SharedConfigList,
    SharedConfigRequest, SharedConfigView, SigningKeyList, SubscriptionList, SubscriptionRequest,
    SubscriptionView, TemplateList, TokenResponse, UpdateOrgRequest, UpdateUserRequest, Usage,
    UserList, UserView, WhoAmI,
};
use flotilla_domain::Money;
use reqwest::StatusCode;
use tokio::sync::Mutex;

use crate::credentials::{CachedLogin, Env, Source, TokenCache};

/// Exit statuses of `product.md`.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const DENIED: u8 = 3;
    pub const UNREACHABLE: u8 = 4;
    /// Interrupted (Ctrl-C) while waiting; the server goes on.
    pub const INTERRUPTED: u8 = 130;
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
    session: Session,
}

/// The credentials of this run and the tokens they got.
struct Session {
    source: Source,
    /// Where a login from `flotilla login` is kept, to save refreshed tokens.
    cache: Option<TokenCache>,
    live: Mutex<Option<CachedLogin>>,
}

/// A failure with the exit status it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    /// The server's stable error code, when the server refused.
    pub api_error: Option<String>,
    /// The server's answer, when it refused.
    pub body: Option<String>,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            api_error: None,
            body: None,
        }
    }
}

type Result<T> = std::result::Result<T, Failure>;

impl From<crate::credentials::CredentialError> for Failure {
    fn from(e: crate::credentials::CredentialError) -> Self {
        Failure::new(exit::DENIED, e.to_string())
    }
}

impl Client {
    /// A client with credentials found the usual way (see `credentials`).
    pub fn new(server: &str, output: Output) -> Result<Self> {
        let env = Env::from_process();
        let mut client = Self::anonymous(server, output)?;
        let source = crate::credentials::resolve(&env, &client.server)?;
        client.session.cache = match source {
            Source::Cached(_) => Some(env.token_cache()?),
            _ => None,
        };
        client.session.source = source;
        Ok(client)
    }

    /// A client that sends no credentials.
    pub fn anonymous(server: &str, output: Output) -> Result<Self> {
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
            session: Session {
                source: Source::Anonymous,
                cache: None,
                live: Mutex::new(None),
            },
        })
    }

    /// The bearer token for the next request: the cached or fresh login's,
    /// refreshed when it is close to expiry, so long waits never fail on it.
    async fn bearer(&self) -> Result<Option<String>> {
        let mut live = self.session.live.lock().await;
        let now = Utc::now();
        match &self.session.source {
            Source::Anonymous => return Ok(None),
            Source::Token(t) => return Ok(Some(t.clone())),
            Source::Cached(cached) if live.is_none() => *live = Some(cached.clone()),
            _ => {}
        }
        let previous = live.take();
        let current = match previous.clone() {
            Some(login) if !login.needs_refresh(now) => login,
            Some(login) if login.refresh_expires_at > now => match self.refresh(&login).await {
                Ok(fresh) => fresh,
                // Refused: the kept login is over; anything else (the server
                // unreachable, say) is reported as it is.
                Err(e) if e.code == exit::DENIED => match &self.session.source {
                    Source::Cached(_) => {
                        return Err(Failure::new(
                            exit::DENIED,
                            format!(
                                "your login to {} has run out ({}); run `flotilla login` again",
                                self.server, e.message
                            ),
                        ))
                    }
                    _ => self.sign_in().await?,
                },
                Err(e) => return Err(e),
            },
            Some(_) if matches!(self.session.source, Source::Cached(_)) => {
                return Err(Failure::new(
                    exit::DENIED,
                    format!(
                        "your login to {} has expired; run `flotilla login` again",
                        self.server
                    ),
                ))
            }
            _ => self.sign_in().await?,
        };
        // Only a refreshed kept login is written back.
        if let Some(cache) = &self.session.cache {
            if previous.as_ref() != Some(&current) {
                cache.put(&self.server, current.clone())?;
            }
        }
        let token = current.access_token.clone();
        *live = Some(current);
        Ok(Some(token))
    }

    /// Signs in with this run's password or GitHub token.
    async fn sign_in(&self) -> Result<CachedLogin> {
        match &self.session.source {
            Source::Password {
                username,
                password,
                origin,
            } => self
                .login_with(&LoginRequest {
                    username: username.clone(),
                    password: password.clone(),
                })
                .await
                .map_err(|f| {
                    Failure::new(
                        f.code,
                        format!("signing in as {username} (from {origin}): {}", f.message),
                    )
                }),
            Source::Github(token) => self
                .github_login_with(&GithubLoginRequest {
                    token: token.clone(),
                })
                .await
                .map_err(|f| {
                    Failure::new(
                        f.code,
                        format!("signing in with FLOTILLA_GITHUB_TOKEN: {}", f.message),
                    )
                }),
            _ => unreachable!("only password and GitHub sources sign in"),
        }
    }

    pub async fn login_with(&self, request: &LoginRequest) -> Result<CachedLogin> {
        let req = self.http.post(self.url("/api/v1/auth/login")).json(request);
        Ok(cached(self.send_raw::<TokenResponse>(req).await?.0))
    }

    pub async fn github_login_with(&self, request: &GithubLoginRequest) -> Result<CachedLogin> {
        let req = self
            .http
            .post(self.url("/api/v1/auth/github"))
            .json(request);
        Ok(cached(self.send_raw::<TokenResponse>(req).await?.0))
    }

    async fn refresh(&self, login: &CachedLogin) -> Result<CachedLogin> {
        let req = self
            .http
            .post(self.url("/api/v1/auth/refresh"))
            .json(&RefreshRequest {
                refresh_token: login.refresh_token.clone(),
            });
        // Quiet: a refused refresh is handled (signed in again, or said
        // as a login that ran out), never printed as the command's answer.
        let (answer, _) = parse::<TokenResponse>(self.exchange_quiet(req).await?)?;
        Ok(cached(answer))
    }

    /// `flotilla login`: signs in and keeps the tokens for this server.
    pub async fn login(&self, source: Source, cache: &TokenCache) -> Result<u8> {
        let login = match source {
            Source::Password { username, password, .. } => {
                self.login_with(&LoginRequest { username, password }).await?
            }
            Source::Github(token) => self.github_login_with(&GithubLoginRequest { token }).await?,
            Source::Token(_) | Source::Cached(_) | Source::Anonymous => {
                return Err(Failure::new(
                    exit::USAGE,
                    "nothing to sign in with: pass --username (password on standard input) or --github-token, or set FLOTILLA_USERNAME and FLOTILLA_PASSWORD",
                ))
            }
        };
        cache.put(&self.server, login.clone())?;
        match self.output {
            Output::Json => println!(
                "{}",
                serde_json::json!({"username": login.username, "expires_at": login.expires_at, "refresh_expires_at": login.refresh_expires_at})
            ),
            Output::Text => println!(
                "signed in to {} as {}; the login is kept in {} until {}",
                self.server,
                login.username,
                cache.path.display(),
                login.refresh_expires_at.format("%Y-%m-%dT%H:%M:%SZ")
            ),
        }
        Ok(exit::OK)
    }

    /// `flotilla logout`: revokes the kept login at the server and forgets it.
    pub async fn logout(&self, cache: &TokenCache) -> Result<u8> {
        let Some(login) = cache.get(&self.server)? else {
            println!("not signed in to {}", self.server);
            return Ok(exit::OK);
        };
        let req = self
            .http
            .post(self.url("/api/v1/auth/logout"))
            .json(&RefreshRequest {
                refresh_token: login.refresh_token.clone(),
            });
        // Forgotten here even if the server no longer knows the token.
        let revoked = self.send_empty(req).await;
        cache.remove(&self.server)?;
        match revoked {
            Ok(()) => println!("signed out of {}", self.server),
            Err(f) => println!(
                "forgot the login to {} (the server said: {})",
                self.server, f.message
            ),
        }
        Ok(exit::OK)
    }

    pub async fn whoami(&self) -> Result<u8> {
        let (who, raw) = self
            .send::<WhoAmI>(self.http.get(self.url("/api/v1/auth/whoami")))
            .await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                println!(
                    "{} ({}); clusters: {}",
                    who.username.as_deref().unwrap_or("anonymous"),
                    who.level.as_str(),
                    if who.clusters.is_empty() {
                        "none".to_owned()
                    } else {
                        who.clusters.join(", ")
                    }
                );
                println!(
                    "credentials: {}",
                    crate::credentials::describe(&self.session.source, self.session.cache.as_ref())
                );
            }
        }
        Ok(exit::OK)
    }

    /// `flotilla version`: this command line's version and the server's
    /// (from `/healthz`); a difference is said, on standard error.
    pub async fn version(&self) -> Result<u8> {
        let mine = env!("CARGO_PKG_VERSION");
        let theirs = self.server_version().await?;
        let theirs = theirs.as_str();
        match self.output {
            Output::Json => println!(
                "{}",
                serde_json::json!({"client": mine, "server": theirs, "server_url": self.server})
            ),
            Output::Text => println!("client {mine}\nserver {theirs} ({})", self.server),
        }
        if theirs != mine {
            eprintln!(
                "flotilla: the server runs {theirs} and this command line is {mine}; \
                 use the same version on both to be sure they agree"
            );
        }
        Ok(exit::OK)
    }

    /// `flotilla doctor`: what a new user checks first, each a line that
    /// starts `ok`, `warn` or `FAIL`: the server answers and runs this
    /// version, who the credentials are and where they came from, the
    /// pools, and the clusters something stands in the way of. Exit 1 on a
    /// failure, 4 if the server cannot be reached.
    pub async fn doctor(&self) -> Result<u8> {
        let mut failed = false;
        let mut say = |level: &str, line: String| {
            failed |= level == "FAIL";
            println!("{level:<5} {line}");
        };
        let mine = env!("CARGO_PKG_VERSION");
        let theirs = self.server_version().await?;
        if theirs == mine {
            say(
                "ok",
                format!("server {} answers, version {theirs}", self.server),
            );
        } else {
            say(
                "warn",
                format!(
                    "server {} answers but runs {theirs}, and this command line is {mine}: use the same version on both",
                    self.server
                ),
            );
        }
        let source =
            crate::credentials::describe(&self.session.source, self.session.cache.as_ref());
        match self
            .send_quiet::<WhoAmI>(self.http.get(self.url("/api/v1/auth/whoami")))
            .await
        {
            Ok((who, _)) => match who.username {
                Some(name) => say(
                    "ok",
                    format!("signed in as {name} ({}), credentials from {source}", who.level.as_str()),
                ),
                None => say(
                    "warn",
                    "not signed in: only public clusters are visible (`flotilla login`, or set FLOTILLA_TOKEN)".to_owned(),
                ),
            },
            Err(f) => say("FAIL", format!("credentials from {source} are refused: {}", f.message)),
        }
        match self
            .send_quiet::<PoolList>(self.http.get(self.url("/api/v1/pools")))
            .await
        {
            Ok((list, _)) => {
                let names: Vec<String> = list
                    .pools
                    .iter()
                    .map(|p| {
                        let default = if p.default { ", default" } else { "" };
                        let more = p.types.len().saturating_sub(1);
                        let more = if more > 0 {
                            format!(" and {more} more")
                        } else {
                            String::new()
                        };
                        format!(
                            "{} ({} {}{more}{default})",
                            p.name, p.driver, p.instance_type
                        )
                    })
                    .collect();
                say("ok", format!("pools: {}", names.join(", ")));
            }
            Err(f) => say("FAIL", format!("listing pools failed: {}", f.message)),
        }
        match self
            .send_quiet::<ClusterList>(self.http.get(self.url("/api/v1/clusters")))
            .await
        {
            Ok((list, _)) => {
                let stuck: Vec<&ClusterStatus> =
                    list.clusters.iter().filter(|c| c.error.is_some()).collect();
                if stuck.is_empty() {
                    say(
                        "ok",
                        format!(
                            "clusters you can see: {}, nothing stands in their way",
                            list.clusters.len()
                        ),
                    );
                }
                for c in stuck {
                    let e = c.error.as_ref().expect("filtered");
                    say(
                        "FAIL",
                        format!(
                            "cluster {}: {} ({}×): {}; see `flotilla status {}`",
                            c.cluster, e.code, e.count, e.message, c.cluster
                        ),
                    );
                }
            }
            Err(f) => say("FAIL", format!("listing clusters failed: {}", f.message)),
        }
        Ok(if failed { exit::FAILED } else { exit::OK })
    }

    /// The server's version, from `/healthz`.
    async fn server_version(&self) -> Result<String> {
        let (health, _) = self
            .send::<serde_json::Value>(self.http.get(self.url("/healthz")))
            .await?;
        Ok(health["version"].as_str().unwrap_or("unknown").to_owned())
    }

    /// `flotilla token CLUSTER`: a cluster access token, printed alone.
    pub async fn cluster_token(&self, cluster: &str) -> Result<u8> {
        let req = self
            .http
            .post(self.url(&format!("/api/v1/clusters/{cluster}/token")));
        let (token, raw) = self.send::<ClusterTokenResponse>(req).await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => println!("{}", token.token),
        }
        Ok(exit::OK)
    }

    /// What went wrong making a pool's nodes.
    pub async fn pool_errors(&self, pool: &str, limit: usize) -> Result<u8> {
        let req = self
            .http
            .get(self.url(&format!("/api/v1/pools/{pool}/errors")))
            .query(&[("limit", limit)]);
        let (list, raw) = self.send::<PoolErrorList>(req).await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text if list.errors.is_empty() => {
                println!("no errors in pool {pool} (of the clusters you may see)")
            }
            Output::Text => {
                let now = Utc::now();
                let rows: Vec<Vec<String>> = list
                    .errors
                    .iter()
                    .map(|e| {
                        vec![
                            relative(e.last_at, now),
                            e.kind.clone(),
                            e.code.clone().unwrap_or_else(|| "-".into()),
                            e.cluster.clone(),
                            e.instance_type.clone(),
                            e.count.to_string(),
                            e.message.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &["LAST", "KIND", "CODE", "CLUSTER", "TYPE", "TIMES", "MESSAGE"],
                        &rows
                    )
                );
            }
        }
        Ok(exit::OK)
    }

    /// `flotilla pool apply`: writes the pool (or, dry, says what would
    /// change).
    pub async fn pool_apply(
        &self,
        pool: &str,
        document: &serde_json::Value,
        dry_run: bool,
        expected_version: Option<u64>,
    ) -> Result<u8> {
        let mut req = self
            .http
            .put(self.url(&format!("/api/v1/pools/{pool}")))
            .query(&[("dry_run", dry_run)])
            .json(document);
        if let Some(v) = expected_version {
            req = req.query(&[("expected_version", v)]);
        }
        let (applied, raw) = self.send::<PoolApplied>(req).await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                let verb = match (applied.outcome.as_str(), dry_run) {
                    ("created", false) => "created",
                    ("created", true) => "would be created",
                    ("changed", false) => "changed",
                    ("changed", true) => "would change",
                    (_, false) => "unchanged (already as written)",
                    (_, true) => "would not change (already as written)",
                };
                let version = applied
                    .pool
                    .version
                    .filter(|_| !dry_run)
                    .map(|v| format!(" (version {v})"))
                    .unwrap_or_default();
                println!("pool {pool} {verb}{version}");
                if !applied.changed_fields.is_empty() {
                    println!("fields: {}", applied.changed_fields.join(", "));
                }
                if !applied.pool.clusters.is_empty() {
                    println!("used by: {}", applied.pool.clusters.join(", "));
                }
                let replaced: usize = applied.replaces.iter().map(|c| c.outdated.len()).sum();
                if replaced > 0 {
                    let verb = if dry_run { "would replace" } else { "replaces" };
                    println!(
                        "rollout {verb} {replaced} node(s) with nodes at version {}:",
                        applied.launch_version.as_deref().unwrap_or("?")
                    );
                    for c in &applied.replaces {
                        println!(
                            "  {}: {} of {} ({})",
                            c.cluster,
                            c.outdated.len(),
                            c.nodes,
                            c.outdated.join(", ")
                        );
                    }
                }
            }
        }
        Ok(exit::OK)
    }

    /// `flotilla pool rollout|pause|resume`: the pool's rollout, after
    /// pausing or resuming it if `action` says.
    pub async fn pool_rollout(&self, pool: &str, action: Option<&str>) -> Result<u8> {
        let req = match action {
            Some(action) => self
                .http
                .post(self.url(&format!("/api/v1/pools/{pool}/rollout/{action}"))),
            None => self
                .http
                .get(self.url(&format!("/api/v1/pools/{pool}/rollout"))),
        };
        let (r, raw) = self.send::<PoolRollout>(req).await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                let state = match (&r.paused, &r.stopped) {
                    (Some(p), _) => format!(
                        "paused by {} at {}: replacements under way finish, no others start (`flotilla pool resume {pool}`)",
                        p.by,
                        stamp(p.at)
                    ),
                    (None, Some(s)) if r.state == "stopped" => format!(
                        "stopped at {}: {} (`flotilla pool resume {pool}` to try again)",
                        stamp(s.at),
                        s.reason
                    ),
                    _ if r.state == "rolling" => "rolling: outdated nodes are being replaced".to_owned(),
                    _ => "idle: every node is made from the pool as it is now".to_owned(),
                };
                println!("pool:     {}", r.pool);
                println!("rollout:  {state}");
                match (&r.launch_version, &r.error) {
                    (Some(v), _) => println!("version:  {v}"),
                    (None, Some(e)) => println!("version:  none: {e}"),
                    _ => {}
                }
                println!(
                    "budget:   max_surge {}, max_unavailable {}, stop after {} failed replacement(s) in a row",
                    r.max_surge, r.max_unavailable, r.max_failures
                );
                println!("outdated: {} node(s)", r.outdated);
                if !r.clusters.is_empty() {
                    let rows: Vec<Vec<String>> = r
                        .clusters
                        .iter()
                        .map(|c| {
                            vec![
                                c.cluster.clone(),
                                c.nodes.to_string(),
                                c.outdated.len().to_string(),
                                c.outdated.join(", "),
                            ]
                        })
                        .collect();
                    println!();
                    print!(
                        "{}",
                        table(&["CLUSTER", "NODES", "OUTDATED", "OUTDATED NODES"], &rows)
                    );
                }
            }
        }
        Ok(exit::OK)
    }

    /// `flotilla pool show`: the pool's facts, then its document as TOML.
    pub async fn pool_show(&self, pool: &str) -> Result<u8> {
        let req = self.http.get(self.url(&format!("/api/v1/pools/{pool}")));
        let (detail, raw) = self.send::<PoolDetail>(req).await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                let source = match detail.version {
                    Some(v) => format!("written through the API, version {v}"),
                    None => "the server's config file (read-only here)".to_owned(),
                };
                println!(
                    "pool:     {}{}",
                    detail.name,
                    if detail.default { " (default)" } else { "" }
                );
                println!("source:   {source}");
                if let (Some(at), Some(by)) = (detail.updated_at, &detail.updated_by) {
                    println!("updated:  {} by {by}", at.format("%Y-%m-%d %H:%M:%S UTC"));
                }
                match (&detail.image, &detail.image_from, &detail.image_problem) {
                    (_, _, Some(problem)) => println!("image:    none: {problem}"),
                    (Some(image), Some(from), _) => println!(
                        "image:    {image} (shared config {} version {})",
                        from.shared_config, from.version
                    ),
                    (Some(image), None, _) => println!("image:    {image}"),
                    (None, _, _) => println!("image:    the driver's"),
                }
                println!(
                    "clusters: {}",
                    if detail.clusters.is_empty() {
                        "none".to_owned()
                    } else {
                        detail.clusters.join(", ")
                    }
                );
                println!();
                print!("{}", toml_of(&detail.document));
            }
        }
        Ok(exit::OK)
    }

    /// `flotilla pool retire`.
    pub async fn pool_retire(&self, pool: &str) -> Result<u8> {
        let req = self.http.delete(self.url(&format!("/api/v1/pools/{pool}")));
        let (version, raw) = self.send::<PoolVersion>(req).await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => println!("pool {pool} retired (version {})", version.version),
        }
        Ok(exit::OK)
    }

    /// `flotilla pool history`.
    pub async fn pool_history(&self, pool: &str) -> Result<u8> {
        let req = self
            .http
            .get(self.url(&format!("/api/v1/pools/{pool}/history")));
        let (history, raw) = self.send::<PoolHistory>(req).await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text if history.versions.is_empty() => println!(
                "pool {pool} comes from the server's config file; its history is the file's"
            ),
            Output::Text => {
                let rows: Vec<Vec<String>> = history
                    .versions
                    .iter()
                    .map(|v| {
                        vec![
                            v.version.to_string(),
                            v.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            v.by.clone(),
                            if v.retired { "retired" } else { "applied" }.to_owned(),
                        ]
                    })
                    .collect();
                print!("{}", table(&["VERSION", "AT (UTC)", "BY", "WHAT"], &rows));
            }
        }
        Ok(exit::OK)
    }

    /// `flotilla schema show [DRIVER]`: a schema is JSON whatever the
    /// output; the index is a table in text.
    pub async fn schema_show(&self, driver: Option<&str>, shared: Option<&str>) -> Result<u8> {
        match driver {
            Some(driver) => {
                let path = match shared {
                    Some(kind) => format!("/api/v1/schemas/{driver}/shared/{kind}"),
                    None => format!("/api/v1/schemas/{driver}/pool"),
                };
                let req = self.http.get(self.url(&path));
                let (schema, _) = self.send::<serde_json::Value>(req).await?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&schema).unwrap_or_default()
                );
            }
            None => {
                let req = self.http.get(self.url("/api/v1/schemas"));
                let (index, raw) = self.send::<SchemaIndex>(req).await?;
                match self.output {
                    Output::Json => println!("{}", raw.trim()),
                    Output::Text => {
                        let rows: Vec<Vec<String>> = index
                            .drivers
                            .iter()
                            .map(|d| {
                                vec![
                                    d.driver.clone(),
                                    d.kind.clone(),
                                    d.pool.clone(),
                                    d.shared.keys().cloned().collect::<Vec<_>>().join(", "),
                                ]
                            })
                            .collect();
                        print!(
                            "{}",
                            table(&["DRIVER", "TYPE", "POOL SCHEMA", "SHARED KINDS"], &rows)
                        );
                    }
                }
            }
        }
        Ok(exit::OK)
    }

    /// `flotilla shared-config create|update`.
    pub async fn shared_write(
        &self,
        name: &str,
        schema: Option<String>,
        value: serde_json::Value,
        expected_version: Option<u64>,
    ) -> Result<u8> {
        let mut req = self
            .http
            .put(self.url(&format!("/api/v1/shared-configs/{name}")))
            .json(&SharedConfigRequest { schema, value });
        if let Some(v) = expected_version {
            req = req.query(&[("expected_version", v)]);
        }
        let (config, raw) = self.send::<SharedConfigView>(req).await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                println!("shared config {name} is at version {}", config.version);
                if !config.used_by.is_empty() {
                    println!(
                        "pools launching with it from now on: {}",
                        config.used_by.join(", ")
                    );
                }
            }
        }
        Ok(exit::OK)
    }

    /// `flotilla shared-config show`.
    pub async fn shared_show(&self, name: &str, version: Option<u64>) -> Result<u8> {
        let mut req = self
            .http
            .get(self.url(&format!("/api/v1/shared-configs/{name}")));
        if let Some(v) = version {
            req = req.query(&[("version", v)]);
        }
        let (config, raw) = self.send::<SharedConfigView>(req).await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                let current = if config.version == config.latest {
                    " (the one pools use)"
                } else {
                    ""
                };
                println!("shared config: {}", config.name);
                println!(
                    "version:       {} of {}{current}",
                    config.version, config.latest
                );
                println!("schema:        {}", config.schema);
                println!(
                    "written:       {} by {}",
                    config.at.format("%Y-%m-%d %H:%M:%S UTC"),
                    config.by
                );
                println!(
                    "used by:       {}",
                    if config.used_by.is_empty() {
                        "no pool".to_owned()
                    } else {
                        config.used_by.join(", ")
                    }
                );
                println!();
                match &config.value {
                    serde_json::Value::Object(_) => print!("{}", toml_of(&config.value)),
                    other => println!("{other}"),
                }
            }
        }
        Ok(exit::OK)
    }

    /// `flotilla shared-config list`.
    pub async fn shared_list(&self) -> Result<u8> {
        let req = self.http.get(self.url("/api/v1/shared-configs"));
        let (list, raw) = self.send::<SharedConfigList>(req).await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                let rows: Vec<Vec<String>> = list
                    .shared_configs
                    .iter()
                    .map(|c| {
                        vec![
                            c.name.clone(),
                            c.version.to_string(),
                            c.schema.clone(),
                            c.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            c.by.clone(),
                            c.used_by.join(", "),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "NAME",
                            "VERSION",
                            "SCHEMA",
                            "WRITTEN (UTC)",
                            "BY",
                            "USED BY"
                        ],
                        &rows
                    )
                );
            }
        }
        Ok(exit::OK)
    }

    pub async fn pools(&self) -> Result<u8> {
        let (list, raw) = self
            .send::<PoolList>(self.http.get(self.url("/api/v1/pools")))
            .await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => print!("{}", pools_table(&list.pools)),
        }
        Ok(exit::OK)
    }

    /// `flotilla events`: pages through the feed from `after` (0: the
    /// oldest kept); following, from the latest change unless `after` is
    /// given, waiting for each next one until interrupted.
    pub async fn events(
        &self,
        cluster: Option<&str>,
        after: Option<i64>,
        follow: bool,
    ) -> Result<u8> {
        let mut after = match (after, follow) {
            (Some(a), _) => a,
            (None, false) => 0,
            (None, true) => self.events_page(cluster, 0, 0, false).await?.0.latest,
        };
        loop {
            let (page, _) = self.events_page(cluster, after, 100, follow).await?;
            match self.output {
                // One JSON object per line, so a follower's output can be
                // read as it comes.
                Output::Json => {
                    for e in &page.events {
                        println!("{}", serde_json::to_string(e).unwrap_or_default());
                    }
                }
                Output::Text => {
                    for e in &page.events {
                        println!("{}", event_line(e));
                    }
                }
            }
            after = page.next;
            if !page.more && !follow {
                return Ok(exit::OK);
            }
        }
    }

    async fn events_page(
        &self,
        cluster: Option<&str>,
        after: i64,
        limit: usize,
        follow: bool,
    ) -> Result<(EventList, String)> {
        let mut query: Vec<(&str, String)> = vec![
            ("after", after.to_string()),
            ("limit", limit.to_string()),
            ("follow", follow.to_string()),
        ];
        if let Some(c) = cluster {
            query.push(("cluster", c.to_owned()));
        }
        self.send::<EventList>(self.http.get(self.url("/api/v1/events")).query(&query))
            .await
    }

    pub async fn user_add(&self, request: CreateUserRequest) -> Result<u8> {
        let req = self.http.post(self.url("/api/v1/users")).json(&request);
        let (user, raw) = self.send::<UserView>(req).await?;
        self.print_user(&user, &raw);
        Ok(exit::OK)
    }

    pub async fn user_list(&self) -> Result<u8> {
        let (list, raw) = self
            .send::<UserList>(self.http.get(self.url("/api/v1/users")))
            .await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                let rows: Vec<Vec<String>> = list
                    .users
                    .iter()
                    .map(|u| {
                        vec![
                            u.username.clone(),
                            u.level.as_str().to_owned(),
                            u.kind.to_string(),
                            u.grants.join(", "),
                        ]
                    })
                    .collect();
                print!("{}", table(&["USER", "LEVEL", "KIND", "GRANTS"], &rows));
            }
        }
        Ok(exit::OK)
    }

    pub async fn user_update(&self, username: &str, request: UpdateUserRequest) -> Result<u8> {
        let req = self
            .http
            .patch(self.url(&format!("/api/v1/users/{username}")))
            .json(&request);
        let (user, raw) = self.send::<UserView>(req).await?;
        self.print_user(&user, &raw);
        Ok(exit::OK)
    }

    pub async fn user_remove(&self, username: &str) -> Result<u8> {
        let req = self
            .http
            .delete(self.url(&format!("/api/v1/users/{username}")));
        self.send_empty(req).await?;
        if self.output == Output::Text {
            println!("removed {username}");
        }
        Ok(exit::OK)
    }

    /// The keys that verify tokens: which one signs, and each one's age.
    pub async fn key_list(&self) -> Result<u8> {
        let (list, raw) = self
            .send::<SigningKeyList>(self.http.get(self.url("/api/v1/auth/keys")))
            .await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                let now = Utc::now();
                let rows: Vec<Vec<String>> = list
                    .keys
                    .iter()
                    .map(|key| {
                        let role = if key.signs { "signs" } else { "verifies only" };
                        let made = key.created_at.map_or("-".to_owned(), |at| {
                            format!(
                                "{} ({} ago)",
                                stamp(at),
                                span((now - at).to_std().unwrap_or_default())
                            )
                        });
                        vec![key.kid.clone(), role.to_owned(), made]
                    })
                    .collect();
                print!("{}", table(&["KEY", "ROLE", "MADE"], &rows));
            }
        }
        Ok(exit::OK)
    }

    pub async fn key_rotate(&self) -> Result<u8> {
        let (answer, raw) = self
            .send::<serde_json::Value>(self.http.post(self.url("/api/v1/auth/keys")))
            .await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => println!("new signing key {}", answer["kid"].as_str().unwrap_or("?")),
        }
        Ok(exit::OK)
    }

    pub async fn key_retire(&self, kid: &str) -> Result<u8> {
        let req = self
            .http
            .delete(self.url(&format!("/api/v1/auth/keys/{kid}")));
        self.send_empty(req).await?;
        if self.output == Output::Text {
            println!("retired key {kid}");
        }
        Ok(exit::OK)
    }

    fn print_user(&self, user: &UserView, raw: &str) {
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => println!("{}", user_line(user)),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    /// Sends with this run's credentials.
    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(T, String)> {
        let text = self.send_text(req).await?;
        parse(text)
    }

    /// Sends with credentials, expecting no body back.
    async fn send_empty(&self, req: reqwest::RequestBuilder) -> Result<()> {
        self.send_text(req).await.map(|_| ())
    }

    /// Sends with credentials, returning the body as it is (not JSON). An
    /// access token the server no longer takes (its signing key retired,
    /// its account changed, or it ran out early by this host's clock) is
    /// refreshed, or signed in for again, once before giving up, so
    /// retiring a key never locks out a kept login.
    async fn send_text(&self, req: reqwest::RequestBuilder) -> Result<String> {
        let result = self.send_text_quiet(req).await;
        self.said(result)
    }

    /// [`send_text`](Self::send_text) that prints nothing of a refusal:
    /// for lookups whose failure the caller handles.
    async fn send_text_quiet(&self, req: reqwest::RequestBuilder) -> Result<String> {
        let again = req.try_clone();
        let first = self.exchange_quiet(self.authorised(req).await?).await;
        match (first, again) {
            (Err(f), Some(again)) if self.renewable(&f) => {
                self.drop_access_token().await;
                self.exchange_quiet(self.authorised(again).await?).await
            }
            (result, _) => result,
        }
    }

    /// [`send`](Self::send) that prints nothing of a refusal.
    async fn send_quiet<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(T, String)> {
        parse(self.send_text_quiet(req).await?)
    }

    async fn authorised(&self, req: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder> {
        Ok(match self.bearer().await? {
            Some(token) => req.bearer_auth(token),
            None => req,
        })
    }

    /// Whether `f` is a refusal of the access token that a fresh one may
    /// cure, and this run has a way to get one.
    fn renewable(&self, f: &Failure) -> bool {
        matches!(
            f.api_error.as_deref(),
            Some("token_unknown_key" | "token_expired" | "token_revoked")
        ) && matches!(
            self.session.source,
            Source::Cached(_) | Source::Password { .. } | Source::Github(_)
        )
    }

    /// Makes the next `bearer` refresh the login (or sign in again).
    async fn drop_access_token(&self) {
        let mut live = self.session.live.lock().await;
        if live.is_none() {
            if let Source::Cached(cached) = &self.session.source {
                *live = Some(cached.clone());
            }
        }
        if let Some(login) = live.as_mut() {
            login.expires_at = login.issued_at;
        }
    }

    /// Sends as it is (sign-in calls carry their own credentials).
    async fn send_raw<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(T, String)> {
        let text = self.exchange(req).await?;
        parse(text)
    }

    /// One request: the body of a success, or the failure with its exit
    /// status (the body printed too, in JSON output).
    async fn exchange(&self, req: reqwest::RequestBuilder) -> Result<String> {
        let result = self.exchange_quiet(req).await;
        self.said(result)
    }

    /// Prints the body of a refusal, in JSON output.
    fn said(&self, result: Result<String>) -> Result<String> {
        if let Err(f) = &result {
            if let (Output::Json, Some(body)) = (self.output, &f.body) {
                println!("{}", body.trim());
            }
        }
        result
    }

    /// One request: the body of a success, or the failure with its exit
    /// status.
    async fn exchange_quiet(&self, req: reqwest::RequestBuilder) -> Result<String> {
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
            let body = serde_json::from_str::<ErrorBody>(&text).ok();
            let message = match &body {
                // Each problem of a document on a line of its own.
                Some(b) if !b.problems.is_empty() => {
                    let what = if b.error.starts_with("invalid") {
                        "not valid"
                    } else {
                        "refused"
                    };
                    let mut m = format!("{what} ({}):", b.error);
                    for p in &b.problems {
                        let at = if p.pointer.is_empty() {
                            "(whole)"
                        } else {
                            &p.pointer
                        };
                        m.push_str(&format!("\n  {at}: {}", p.message));
                    }
                    m
                }
                Some(b) => format!("{} ({})", b.message, b.error),
                None => format!("server answered {status}: {}", text.trim()),
            };
            let code = match status {
                StatusCode::BAD_REQUEST
                | StatusCode::UNPROCESSABLE_ENTITY
                | StatusCode::PAYLOAD_TOO_LARGE => exit::USAGE,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => exit::DENIED,
                _ => exit::FAILED,
            };
            let mut failure = Failure::new(code, message);
            failure.api_error = body.map(|b| b.error);
            failure.body = Some(text);
            return Err(failure);
        }
        Ok(text)
    }

    /// DEPLOY. With `wait`, a cluster that is gone by the time it settles
    /// (its time to live ran out, someone destroyed it) is a failure, with
    /// the reason.
    pub async fn deploy(&self, cluster: &str, request: DeployRequest, wait: bool) -> Result<u8> {
        let req = self
            .http
            .put(self.url(&format!("/api/v1/clusters/{cluster}")))
            .query(&[("wait", wait)])
            .json(&request);
        let (status, raw) = self
            .send_waiting::<ClusterStatus>(cluster, req, wait)
            .await
            .map_err(in_flags)?;
        self.print_status(&status, &raw);
        if wait
            && status.settled == Some(true)
            && status.state == flotilla_api_types::ClusterState::NotRunning
        {
            let why = self.why_gone(cluster).await;
            eprintln!("{cluster} is not running: {why}; see `flotilla events {cluster}`");
            return Ok(exit::FAILED);
        }
        Ok(self.settled_exit(&status))
    }

    /// Why a cluster is gone, from its latest changes.
    async fn why_gone(&self, cluster: &str) -> String {
        let req = self
            .http
            .get(self.url(&format!("/api/v1/clusters/{cluster}")))
            .query(&[("events", RECENT_EVENTS)]);
        let Ok((status, _)) = self.send_quiet::<ClusterStatus>(req).await else {
            return "it was destroyed before it settled".to_owned();
        };
        let last = status
            .recent_events
            .iter()
            .rev()
            .find(|e| e.kind == "cluster.expired" || e.kind == "cluster.destroyed");
        // What stood in its way since it was last deployed, if anything.
        let blocked = status
            .recent_events
            .iter()
            .rev()
            .take_while(|e| e.kind != "cluster.deployed")
            .find(|e| e.kind == "cluster.error")
            .map_or(String::new(), |e| {
                format!(
                    "; what stood in its way: {} ({}×): {}",
                    e.details["code"].as_str().unwrap_or("?"),
                    e.details["count"],
                    e.details["message"].as_str().unwrap_or_default()
                )
            });
        let why = match last {
            // Slow nodes want a longer time to live; a refusal, a fix.
            Some(e) if e.kind == "cluster.expired" && blocked.is_empty() => format!(
                "its time to live ran out at {} before its nodes were ready (deploy again with a longer --ttl)",
                e.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            Some(e) if e.kind == "cluster.expired" => format!(
                "its time to live ran out at {} before its nodes were ready",
                e.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            Some(e) => format!(
                "it was destroyed at {} before its nodes were ready",
                e.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            None => "it was destroyed before it settled".to_owned(),
        };
        why + &blocked
    }

    /// A node's output; with `follow`, what it prints next as well, until
    /// interrupted (or the node goes).
    pub async fn logs(&self, cluster: &str, node: Option<&str>, follow: bool) -> Result<u8> {
        let url = self.url(&format!("/api/v1/clusters/{cluster}/logs"));
        let mut node = node.map(str::to_owned);
        let mut from: Option<u64> = None;
        loop {
            let mut query: Vec<(&str, String)> = Vec::new();
            if let Some(n) = &node {
                query.push(("node", n.clone()));
            }
            if let Some(f) = from {
                query.push(("from", f.to_string()));
            }
            let (page, raw) = self
                .send::<NodeLogs>(self.http.get(url.clone()).query(&query))
                .await?;
            match self.output {
                Output::Json => println!("{}", raw.trim()),
                Output::Text => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(page.text.as_bytes());
                    let _ = out.flush();
                }
            }
            if !follow {
                return Ok(exit::OK);
            }
            // Follow the node first answered, not whichever is oldest next.
            node = Some(page.node);
            if page.to == page.from {
                tokio::time::sleep(LOGS_POLL).await;
            }
            from = Some(page.to);
        }
    }

    /// Runs a command on a node; exits with the command's status (128 +
    /// the signal if one killed it).
    pub async fn exec(&self, cluster: &str, request: ExecRequest) -> Result<u8> {
        let req = self
            .http
            .post(self.url(&format!("/api/v1/clusters/{cluster}/exec")))
            .json(&request);
        let (answer, raw) = self.send::<ExecResponse>(req).await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                let _ = std::io::stdout().write_all(answer.stdout.as_bytes());
                let _ = std::io::stdout().flush();
                let _ = std::io::stderr().write_all(answer.stderr.as_bytes());
                if answer.timed_out {
                    eprintln!(
                        "flotilla: the command ran out of time on node {} and was killed (raise --timeout, at most 10m)",
                        answer.node
                    );
                }
                if answer.truncated {
                    eprintln!("flotilla: output past 1 MiB was dropped");
                }
            }
        }
        Ok(exec_status(&answer))
    }

    /// The ssh logins a cluster's nodes take: user, host and node,
    /// in STATUS's order.
    async fn ssh_targets(&self, cluster: &str) -> Result<(ClusterStatus, Vec<SshTarget>)> {
        let req = self
            .http
            .get(self.url(&format!("/api/v1/clusters/{cluster}")));
        let (status, _) = self.send::<ClusterStatus>(req).await?;
        let Some(user) = status.ssh_user.clone() else {
            let pool = status.pool.as_deref().unwrap_or("-");
            return Err(Failure::new(
                exit::FAILED,
                format!(
                    "the nodes of {cluster} (pool {pool}) take no ssh logins: the pool sets no ssh_user; \
                     `flotilla exec {cluster} -- CMD` runs commands where the pool allows it"
                ),
            ));
        };
        if status.nodes.is_empty() {
            return Err(Failure::new(
                exit::FAILED,
                format!("{cluster} has no nodes now (`flotilla status {cluster}`)"),
            ));
        }
        let targets = status
            .nodes
            .iter()
            .map(|n| SshTarget::of(&user, n))
            .collect();
        Ok((status, targets))
    }

    /// Logs in to a node with the system's `ssh` (replacing this process),
    /// passing `args` after the host.
    pub async fn ssh(&self, cluster: &str, node: Option<&str>, args: &[String]) -> Result<u8> {
        use std::os::unix::process::CommandExt;
        let (status, targets) = self.ssh_targets(cluster).await?;
        let index = match node {
            None => 0,
            Some(wanted) => status
                .nodes
                .iter()
                .position(|n| n.id == wanted)
                .or_else(|| wanted.parse::<usize>().ok().and_then(|k| k.checked_sub(1)))
                .filter(|k| *k < targets.len())
                .ok_or_else(|| {
                    Failure::new(
                        exit::FAILED,
                        format!(
                            "{cluster} has no node {wanted:?}; its nodes: {}",
                            status
                                .nodes
                                .iter()
                                .enumerate()
                                .map(|(k, n)| format!("{} ({})", k + 1, n.id))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?,
        };
        let target = &targets[index];
        let Some(host) = &target.host else {
            return Err(Failure::new(
                exit::FAILED,
                format!(
                    "node {} has no address yet; `flotilla status {cluster} --watch` shows when it has",
                    target.node
                ),
            ));
        };
        let mut ssh = std::process::Command::new("ssh");
        ssh.arg("-l").arg(&target.user).arg(host).args(args);
        let e = ssh.exec();
        Err(Failure::new(
            exit::FAILED,
            format!("cannot run ssh: {e}; install an OpenSSH client"),
        ))
    }

    /// An ssh config block per node (`Host CLUSTER-1` ...), to append to
    /// `~/.ssh/config`.
    pub async fn ssh_config(&self, cluster: &str) -> Result<u8> {
        let (_, targets) = self.ssh_targets(cluster).await?;
        for (k, t) in targets.iter().enumerate() {
            let Some(host) = &t.host else {
                println!("# {cluster}-{}: node {} has no address yet", k + 1, t.node);
                continue;
            };
            println!("Host {cluster}-{}", k + 1);
            println!("    # node {}", t.node);
            println!("    HostName {host}");
            println!("    User {}", t.user);
        }
        Ok(exit::OK)
    }

    pub async fn extend(&self, cluster: &str, request: ExtendRequest) -> Result<u8> {
        let req = self
            .http
            .post(self.url(&format!("/api/v1/clusters/{cluster}/extend")))
            .json(&request);
        self.change(cluster, req, false).await.map_err(in_flags)
    }

    /// DESTROY. The API answers any valid name alike (destroying what is
    /// not there changes nothing); the command line says when a name was
    /// never deployed, which is most often a typo, and fails.
    pub async fn destroy(&self, cluster: &str, wait: bool) -> Result<u8> {
        let req = self
            .http
            .delete(self.url(&format!("/api/v1/clusters/{cluster}")))
            .query(&[("wait", wait)]);
        let (status, raw) = self
            .send_waiting::<ClusterStatus>(cluster, req, wait)
            .await?;
        if absence_line(&status).is_some() && self.never_deployed(cluster).await {
            if self.output == Output::Json {
                println!("{}", raw.trim());
            }
            eprintln!(
                "{cluster} was never deployed (it has no record and no recent changes): nothing to destroy; check the name (`flotilla status` lists your clusters)"
            );
            return Ok(exit::FAILED);
        }
        self.print_status(&status, &raw);
        Ok(self.settled_exit(&status))
    }

    /// Whether the cluster has neither a record nor recent changes.
    async fn never_deployed(&self, cluster: &str) -> bool {
        let req = self
            .http
            .get(self.url(&format!("/api/v1/clusters/{cluster}")))
            .query(&[("events", RECENT_EVENTS)]);
        match self.send_quiet::<ClusterStatus>(req).await {
            Ok((s, _)) => absence_line(&s).is_some() && s.recent_events.is_empty(),
            Err(_) => false,
        }
    }

    /// Sends a deploy or destroy, showing progress while it waits, and
    /// prints the resulting status.
    async fn change(&self, cluster: &str, req: reqwest::RequestBuilder, wait: bool) -> Result<u8> {
        let (status, raw) = self
            .send_waiting::<ClusterStatus>(cluster, req, wait)
            .await?;
        self.print_status(&status, &raw);
        Ok(self.settled_exit(&status))
    }

    /// Sends a request that may wait on `cluster`, showing its progress on
    /// a terminal while it does. Ctrl-C while it waits stops only the
    /// waiting: the server goes on, and the message says how to follow it.
    async fn send_waiting<T: serde::de::DeserializeOwned>(
        &self,
        cluster: &str,
        req: reqwest::RequestBuilder,
        wait: bool,
    ) -> Result<(T, String)> {
        if !wait {
            return self.send::<T>(req).await;
        }
        let show = self.output == Output::Text && std::io::stderr().is_terminal();
        let progress = async {
            if show {
                self.show_progress(cluster).await
            } else {
                std::future::pending().await
            }
        };
        let result = tokio::select! {
            result = self.send::<T>(req) => result,
            never = progress => match never {},
            _ = tokio::signal::ctrl_c() => Err(Failure::new(
                exit::INTERRUPTED,
                format!(
                    "stopped waiting; the server goes on with {cluster}: follow it with `flotilla status {cluster}` (or `flotilla events {cluster} --follow`)"
                ),
            )),
        };
        if show {
            eprint!("\r\x1b[K");
        }
        result
    }

    /// `flotilla scale`: a capacity request on an organisation's cluster.
    pub async fn scale(&self, cluster: &str, request: CapacityRequest, wait: bool) -> Result<u8> {
        let req = self
            .http
            .post(self.url(&format!("/api/v1/clusters/{cluster}/capacity")))
            .query(&[("wait", wait)])
            .json(&request);
        let (answer, raw) = self
            .send_waiting::<CapacityResponse>(cluster, req, wait)
            .await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => println!("{}", capacity_line(&answer)),
        }
        Ok(self.settled_exit(&answer.status))
    }

    /// Withdraws the caller's capacity requests on an organisation's
    /// cluster, and prints the cluster as it is then.
    pub async fn withdraw(&self, cluster: &str) -> Result<u8> {
        let req = self
            .http
            .delete(self.url(&format!("/api/v1/clusters/{cluster}/capacity")));
        self.change(cluster, req, false).await
    }

    pub async fn org_create(&self, request: CreateOrgRequest) -> Result<u8> {
        let req = self.http.post(self.url("/api/v1/orgs")).json(&request);
        let (org, raw) = self.send::<OrgView>(req).await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                let owners: Vec<&str> = org
                    .members
                    .iter()
                    .filter(|m| m.role == "owner")
                    .map(|m| m.username.as_str())
                    .collect();
                println!(
                    "created organisation {} (owners {}); its cluster {} uses pool {} and has no money yet",
                    org.name,
                    owners.join(", "),
                    org.cluster,
                    org.settings.pool
                );
            }
        }
        Ok(exit::OK)
    }

    pub async fn org_list(&self) -> Result<u8> {
        let (list, raw) = self
            .send::<OrgList>(self.http.get(self.url("/api/v1/orgs")))
            .await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text if list.orgs.is_empty() => println!("no organisations"),
            Output::Text => {
                let rows: Vec<Vec<String>> = list
                    .orgs
                    .iter()
                    .map(|o| {
                        vec![
                            o.name.clone(),
                            o.role.clone().unwrap_or_else(|| "-".into()),
                            o.members.to_string(),
                            dollars(&o.balance),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["ORGANISATION", "YOUR ROLE", "MEMBERS", "BALANCE"], &rows)
                );
            }
        }
        Ok(exit::OK)
    }

    pub async fn org_show(&self, org: &str) -> Result<u8> {
        let (view, raw) = self
            .send::<OrgView>(self.http.get(self.url(&format!("/api/v1/orgs/{org}"))))
            .await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                for line in org_lines(&view, Utc::now()) {
                    println!("{line}");
                }
            }
        }
        Ok(exit::OK)
    }

    /// `flotilla org join`: asks the owners to let the caller in.
    pub async fn org_join(&self, org: &str) -> Result<u8> {
        let req = self
            .http
            .post(self.url(&format!("/api/v1/orgs/{org}/membership-requests")));
        let (answer, raw) = self.send::<MembershipRequestResponse>(req).await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => println!(
                "{} asked to join {}: {}",
                answer.username, answer.org, answer.message
            ),
        }
        Ok(exit::OK)
    }

    /// Approves (or refuses) a membership request.
    pub async fn org_decide(&self, org: &str, user: &str, approve: bool) -> Result<u8> {
        let verb = if approve { "approve" } else { "refuse" };
        let req = self.http.post(self.url(&format!(
            "/api/v1/orgs/{org}/membership-requests/{user}/{verb}"
        )));
        self.send_empty(req).await?;
        if self.output == Output::Text {
            if approve {
                println!("{user} is now a member of {org}");
            } else {
                println!("refused {user}'s request to join {org}");
            }
        }
        Ok(exit::OK)
    }

    pub async fn org_remove(&self, org: &str, user: &str) -> Result<u8> {
        let req = self
            .http
            .delete(self.url(&format!("/api/v1/orgs/{org}/members/{user}")));
        self.send_empty(req).await?;
        if self.output == Output::Text {
            println!("removed {user} from {org}, with their capacity requests");
        }
        Ok(exit::OK)
    }

    pub async fn org_role(&self, org: &str, user: &str, role: String) -> Result<u8> {
        let req = self
            .http
            .put(self.url(&format!("/api/v1/orgs/{org}/members/{user}")))
            .json(&MemberRoleRequest { role: role.clone() });
        self.send_empty(req).await?;
        if self.output == Output::Text {
            println!("{user} is now {role} of {org}");
        }
        Ok(exit::OK)
    }

    pub async fn org_set(&self, org: &str, request: UpdateOrgRequest) -> Result<u8> {
        let req = self
            .http
            .patch(self.url(&format!("/api/v1/orgs/{org}")))
            .json(&request);
        let (view, raw) = self.send::<OrgView>(req).await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                println!("{}: {}", view.name, settings_text(&view));
                println!("{}: {}", view.name, budget_text(&view));
            }
        }
        Ok(exit::OK)
    }

    /// An admin's credit, or with a negative amount a correction.
    pub async fn org_credit(&self, org: &str, request: CreditRequest) -> Result<u8> {
        let req = self
            .http
            .post(self.url(&format!("/api/v1/orgs/{org}/credits")))
            .json(&request);
        let (view, raw) = self.send::<OrgView>(req).await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => println!(
                "{} {} {} ({}); the balance is now {}",
                if request.amount.starts_with('-') {
                    "corrected"
                } else {
                    "credited"
                },
                view.name,
                dollars(&request.amount),
                request.reason,
                dollars(&view.budget.balance)
            ),
        }
        Ok(exit::OK)
    }

    pub async fn org_ledger(&self, org: &str) -> Result<u8> {
        let (ledger, raw) = self
            .send::<Ledger>(
                self.http
                    .get(self.url(&format!("/api/v1/orgs/{org}/ledger"))),
            )
            .await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                for e in &ledger.entries {
                    println!(
                        "{}  {:<10} {:>12}  {:<16} {}",
                        stamp(e.at),
                        e.kind,
                        dollars(&e.amount),
                        e.actor.as_deref().unwrap_or("-"),
                        e.reason
                    );
                }
                println!("balance {}", dollars(&ledger.balance));
            }
        }
        Ok(exit::OK)
    }

    /// Costs by day, cluster and user; with `csv`, the server's CSV as it is.
    pub async fn org_costs(&self, org: &str, csv: bool) -> Result<u8> {
        let req = self
            .http
            .get(self.url(&format!("/api/v1/orgs/{org}/costs")));
        if csv {
            let text = self
                .send_text(req.header(reqwest::header::ACCEPT, "text/csv"))
                .await?;
            print!("{text}");
            let _ = std::io::stdout().flush();
            return Ok(exit::OK);
        }
        let (costs, raw) = self.send::<Costs>(req).await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                if costs.rows.is_empty() {
                    println!("no costs yet");
                }
                for r in &costs.rows {
                    println!(
                        "{}  {:<20} {:<16} {:>12}",
                        r.day,
                        r.cluster,
                        r.user.as_deref().unwrap_or("(floor)"),
                        dollars(&r.amount)
                    );
                }
                println!("total {}", dollars(&costs.total));
            }
        }
        Ok(exit::OK)
    }

    /// Queues the job in `file`; with `wait`, follows it to its end.
    pub async fn job_submit(&self, file: &std::path::Path, wait: bool) -> Result<u8> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            Failure::new(exit::USAGE, format!("cannot read {}: {e}", file.display()))
        })?;
        let body: serde_json::Value = if file.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| {
                Failure::new(exit::USAGE, format!("{} is not JSON: {e}", file.display()))
            })?
        } else {
            let table: toml::Table = toml::from_str(&text).map_err(|e| {
                Failure::new(exit::USAGE, format!("{} is not TOML: {e}", file.display()))
            })?;
            serde_json::to_value(table).map_err(|e| Failure::new(exit::USAGE, e.to_string()))?
        };
        let (job, raw) = self
            .send::<JobView>(self.http.post(self.url("/api/v1/jobs")).json(&body))
            .await?;
        if !wait {
            match self.output {
                Output::Json => println!("{}", raw.trim()),
                Output::Text => println!(
                    "job {} ({}) {}{}",
                    job.id,
                    job.name,
                    job.state,
                    job.position.map_or(String::new(), |p| format!(
                        ", position {} of {}",
                        p.place, p.of
                    ))
                ),
            }
            return Ok(exit::OK);
        }
        eprintln!("job {} ({}) queued; following its log", job.id, job.name);
        self.job_wait(job.id).await
    }

    /// Follows job `id`'s attempts' logs until it ends; 0 if it
    /// succeeded, 1 if not.
    async fn job_wait(&self, id: u64) -> Result<u8> {
        let mut followed = 0;
        loop {
            let (job, raw) = self
                .send::<JobView>(self.http.get(self.url(&format!("/api/v1/jobs/{id}"))))
                .await?;
            let state = job.state.as_str();
            let done = matches!(state, "succeeded" | "failed" | "cancelled" | "timed_out");
            let latest = job.attempts.last().map_or(0, |a| a.attempt);
            if latest > followed && self.output == Output::Text {
                followed = self.job_logs(id, Some(latest), true).await?;
                continue;
            }
            if done {
                let last = job.attempts.last();
                match self.output {
                    Output::Json => println!("{}", raw.trim()),
                    Output::Text => eprintln!(
                        "job {id} {state}{}; log: flotilla job logs {id}",
                        last.and_then(|a| a.message.as_deref())
                            .map_or(String::new(), |m| format!(
                                " (attempt {}: {m})",
                                last.map_or(0, |a| a.attempt)
                            ))
                    ),
                }
                return Ok(if state == "succeeded" {
                    exit::OK
                } else {
                    exit::FAILED
                });
            }
            tokio::time::sleep(JOB_POLL).await;
        }
    }

    /// Prints job `id`'s log; returns the attempt it was of.
    pub async fn job_logs(&self, id: u64, attempt: Option<u32>, follow: bool) -> Result<u32> {
        let mut query: Vec<(&str, String)> = vec![("follow", follow.to_string())];
        if let Some(a) = attempt {
            query.push(("attempt", a.to_string()));
        }
        let url = self.url(&format!("/api/v1/jobs/{id}/log"));
        let req = self.authorised(self.http.get(&url).query(&query)).await?;
        let mut resp = match req.send().await {
            Ok(resp) if resp.status().is_success() => resp,
            // The refusal as every command reports it.
            _ => {
                self.send_text(self.http.get(&url).query(&query)).await?;
                return Err(Failure::new(exit::FAILED, "the log could not be read"));
            }
        };
        let attempt = resp
            .headers()
            .get(flotilla_api::ATTEMPT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut out = std::io::stdout().lock();
        loop {
            match resp.chunk().await {
                Ok(Some(bytes)) => {
                    let _ = out.write_all(&bytes);
                    let _ = out.flush();
                }
                Ok(None) => return Ok(attempt),
                Err(e) => {
                    return Err(Failure::new(
                        exit::UNREACHABLE,
                        format!("reading the log failed: {e}"),
                    ))
                }
            }
        }
    }

    /// What an attempt of job `id` (the latest unless `attempt`) kept of
    /// its `artifacts`.
    pub async fn job_files(&self, id: u64, attempt: Option<u32>) -> Result<u8> {
        let mut req = self.http.get(self.url(&format!("/api/v1/jobs/{id}/files")));
        if let Some(a) = attempt {
            req = req.query(&[("attempt", a)]);
        }
        let (files, raw) = self.send::<flotilla_api_types::JobFiles>(req).await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                if files.attempt == 0 {
                    println!("job {id} has not started: it kept nothing yet");
                } else if files.files.is_empty() {
                    println!("attempt {} kept no files", files.attempt);
                }
                for f in &files.files {
                    println!("{:>12}  {}", f.size, f.path);
                }
            }
        }
        Ok(exit::OK)
    }

    /// The file at `path` that an attempt of job `id` kept, written to
    /// `to` (standard output when none).
    pub async fn job_file(
        &self,
        id: u64,
        path: &str,
        attempt: Option<u32>,
        to: Option<&std::path::Path>,
    ) -> Result<u8> {
        let mut query: Vec<(&str, String)> = vec![("path", path.to_owned())];
        if let Some(a) = attempt {
            query.push(("attempt", a.to_string()));
        }
        let url = self.url(&format!("/api/v1/jobs/{id}/file"));
        let req = self.authorised(self.http.get(&url).query(&query)).await?;
        let resp = match req.send().await {
            Ok(resp) if resp.status().is_success() => resp,
            // The refusal as every command reports it.
            _ => {
                self.send_text(self.http.get(&url).query(&query)).await?;
                return Err(Failure::new(exit::FAILED, "the file could not be read"));
            }
        };
        let bytes = resp.bytes().await.map_err(|e| {
            Failure::new(exit::UNREACHABLE, format!("reading the file failed: {e}"))
        })?;
        match to {
            Some(file) => std::fs::write(file, &bytes).map_err(|e| {
                Failure::new(
                    exit::FAILED,
                    format!("cannot write {}: {e}", file.display()),
                )
            })?,
            None => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&bytes);
                let _ = out.flush();
            }
        }
        Ok(exit::OK)
    }

    /// Runs job template `template` against `cluster` at `version`; with
    /// `wait`, follows it to its end (exit 0: passed, 1: failed).
    pub async fn job_run(
        &self,
        template: &str,
        cluster: String,
        version: String,
        wait: bool,
    ) -> Result<u8> {
        let req = self
            .http
            .post(self.url(&format!("/api/v1/job-templates/{template}")))
            .json(&RunTemplateRequest { cluster, version });
        let (job, raw) = self.send::<JobView>(req).await?;
        if !wait {
            match self.output {
                Output::Json => println!("{}", raw.trim()),
                Output::Text => println!("{}", job_line(&job)),
            }
            return Ok(exit::OK);
        }
        eprintln!("job {} ({}) queued; following its log", job.id, job.name);
        self.job_wait(job.id).await
    }

    pub async fn job_templates(&self) -> Result<u8> {
        let (list, raw) = self
            .send::<TemplateList>(self.http.get(self.url("/api/v1/job-templates")))
            .await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                if list.templates.is_empty() {
                    println!("no job templates; add [jobs.templates.NAME] to the server's config");
                }
                for t in &list.templates {
                    println!("{t}");
                }
            }
        }
        Ok(exit::OK)
    }

    pub async fn notify_add(&self, request: SubscriptionRequest) -> Result<u8> {
        let req = self
            .http
            .post(self.url("/api/v1/subscriptions"))
            .json(&request);
        let (s, raw) = self.send::<SubscriptionView>(req).await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                println!("{}", subscription_line(&s));
                if let Some(secret) = &s.secret {
                    println!(
                        "signing secret (shown once; keep it to check each POST's \
                         flotilla-signature header): {secret}"
                    );
                }
                println!("`flotilla notify test {}` sends a test event now", s.id);
            }
        }
        Ok(exit::OK)
    }

    pub async fn notify_list(&self, all: bool) -> Result<u8> {
        let (list, raw) = self
            .send::<SubscriptionList>(
                self.http
                    .get(self.url("/api/v1/subscriptions"))
                    .query(&[("all", all.to_string())]),
            )
            .await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                if list.subscriptions.is_empty() {
                    println!(
                        "no subscriptions; add one with `flotilla notify add --email ADDRESS \
                         --events 'cluster.*'`"
                    );
                }
                for s in &list.subscriptions {
                    println!("{}", subscription_line(s));
                    if let (Some(at), Some(why)) = (s.disabled_at, &s.disabled_reason) {
                        println!(
                            "    disabled {}: {why}; `flotilla notify enable {}` turns it on",
                            stamp(at),
                            s.id
                        );
                    }
                }
            }
        }
        Ok(exit::OK)
    }

    pub async fn notify_remove(&self, id: i64) -> Result<u8> {
        self.send_empty(
            self.http
                .delete(self.url(&format!("/api/v1/subscriptions/{id}"))),
        )
        .await?;
        if self.output == Output::Text {
            println!("subscription {id} removed");
        }
        Ok(exit::OK)
    }

    pub async fn notify_enable(&self, id: i64) -> Result<u8> {
        let (s, raw) = self
            .send::<SubscriptionView>(
                self.http
                    .post(self.url(&format!("/api/v1/subscriptions/{id}/enable"))),
            )
            .await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => println!("{}", subscription_line(&s)),
        }
        Ok(exit::OK)
    }

    pub async fn notify_test(&self, id: i64) -> Result<u8> {
        let (d, raw) = self
            .send::<DeliveryView>(
                self.http
                    .post(self.url(&format!("/api/v1/subscriptions/{id}/test"))),
            )
            .await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => println!(
                "test queued as delivery {}; `flotilla notify deliveries` shows how it went",
                d.id
            ),
        }
        Ok(exit::OK)
    }

    pub async fn notify_deliveries(&self, all: bool, limit: usize) -> Result<u8> {
        let query = [("all", all.to_string()), ("limit", limit.to_string())];
        let (list, raw) = self
            .send::<DeliveryList>(self.http.get(self.url("/api/v1/deliveries")).query(&query))
            .await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                if list.deliveries.is_empty() {
                    println!("no deliveries yet");
                }
                for d in &list.deliveries {
                    println!("{}", delivery_line(d));
                }
            }
        }
        Ok(exit::OK)
    }

    pub async fn schedule_create(&self, request: ScheduleRequest) -> Result<u8> {
        let req = self.http.post(self.url("/api/v1/schedules")).json(&request);
        let (s, raw) = self.send::<ScheduleView>(req).await?;
        self.print_schedule(&s, &raw);
        Ok(exit::OK)
    }

    pub async fn schedule_list(&self) -> Result<u8> {
        let (list, raw) = self
            .send::<ScheduleList>(self.http.get(self.url("/api/v1/schedules")))
            .await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                if list.schedules.is_empty() {
                    println!("no schedules; create one with `flotilla schedule create`");
                }
                for s in &list.schedules {
                    println!("{}", schedule_line(s));
                }
            }
        }
        Ok(exit::OK)
    }

    pub async fn schedule_show(&self, name: &str) -> Result<u8> {
        let (s, raw) = self
            .send::<ScheduleView>(
                self.http
                    .get(self.url(&format!("/api/v1/schedules/{name}"))),
            )
            .await?;
        self.print_schedule(&s, &raw);
        Ok(exit::OK)
    }

    pub async fn schedule_pause(&self, name: &str, paused: bool) -> Result<u8> {
        let verb = if paused { "pause" } else { "resume" };
        let (s, raw) = self
            .send::<ScheduleView>(
                self.http
                    .post(self.url(&format!("/api/v1/schedules/{name}/{verb}"))),
            )
            .await?;
        self.print_schedule(&s, &raw);
        Ok(exit::OK)
    }

    pub async fn schedule_delete(&self, name: &str) -> Result<u8> {
        self.send_empty(
            self.http
                .delete(self.url(&format!("/api/v1/schedules/{name}"))),
        )
        .await?;
        if self.output == Output::Text {
            println!("schedule {name} deleted");
        }
        Ok(exit::OK)
    }

    fn print_schedule(&self, s: &ScheduleView, raw: &str) {
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                println!("{}", schedule_line(s));
                if let Some(at) = s.last_fired_at {
                    println!(
                        "last fired {}{}",
                        stamp(at),
                        match (&s.last_job, &s.last_error) {
                            (_, Some(e)) => format!(": {e}"),
                            (Some(j), None) => format!(": job {j}"),
                            _ => String::new(),
                        }
                    );
                }
            }
        }
    }

    pub async fn job_list(&self, all: bool, limit: usize) -> Result<u8> {
        let query = [("all", all.to_string()), ("limit", limit.to_string())];
        let (list, raw) = self
            .send::<JobList>(self.http.get(self.url("/api/v1/jobs")).query(&query))
            .await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                if list.jobs.is_empty() {
                    println!("no jobs; submit one with `flotilla job submit FILE`");
                }
                for j in &list.jobs {
                    println!("{}", job_line(j));
                }
            }
        }
        Ok(exit::OK)
    }

    pub async fn job_show(&self, id: u64) -> Result<u8> {
        let (job, raw) = self
            .send::<JobView>(self.http.get(self.url(&format!("/api/v1/jobs/{id}"))))
            .await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                println!("{}", job_line(&job));
                println!(
                    "submitted {} by {}{}",
                    stamp(job.submitted_at),
                    job.submitted_by,
                    job.org
                        .as_ref()
                        .map_or(String::new(), |o| format!(", charged to {o}"))
                );
                if let Some(reason) = &job.reason {
                    println!("{reason}");
                }
                println!("cost ${}", job.cost);
                for a in &job.attempts {
                    println!(
                        "  attempt {}: {} ({}, ${}/h) from pool {} on {}{}, started {}{}",
                        a.attempt,
                        a.instance_type,
                        a.market,
                        a.price_per_hour,
                        a.pool,
                        a.instance.as_deref().unwrap_or("(being made)"),
                        if a.warm { " (kept warm)" } else { "" },
                        stamp(a.started_at),
                        match (&a.ended_at, &a.message) {
                            (Some(at), Some(m)) => format!(", ended {}: {m}", stamp(*at)),
                            _ => String::new(),
                        }
                    );
                }
            }
        }
        Ok(exit::OK)
    }

    pub async fn job_cancel(&self, id: u64) -> Result<u8> {
        let (job, raw) = self
            .send::<JobView>(
                self.http
                    .post(self.url(&format!("/api/v1/jobs/{id}/cancel"))),
            )
            .await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => println!("{}", job_line(&job)),
        }
        Ok(exit::OK)
    }

    /// Every metered node: when it ran, its price, what it was charged.
    pub async fn org_usage(&self, org: &str) -> Result<u8> {
        let (usage, raw) = self
            .send::<Usage>(
                self.http
                    .get(self.url(&format!("/api/v1/orgs/{org}/usage"))),
            )
            .await?;
        match self.output {
            Output::Json => println!("{}", raw.trim()),
            Output::Text => {
                if usage.nodes.is_empty() {
                    println!("no nodes yet");
                }
                for n in &usage.nodes {
                    let ended = match (n.ended_at, n.ended.as_deref()) {
                        (Some(at), Some("unwatched")) => {
                            format!("{} (went unwatched)", stamp(at))
                        }
                        (Some(at), _) => stamp(at),
                        _ => "running".to_owned(),
                    };
                    let what = match (&n.job, &n.charged_to) {
                        (Some(job), Some(by)) => format!("{} (job {job}, {by})", n.id),
                        (Some(job), None) => format!("{} (job {job})", n.id),
                        _ => n.id.clone(),
                    };
                    println!(
                        "{:<24} {}  {:<32} {:>10}/h {:>12}",
                        what,
                        stamp(n.launched_at),
                        ended,
                        rate(&n.price_per_hour),
                        dollars(&n.charged)
                    );
                }
                println!("total {}", dollars(&usage.total));
            }
        }
        Ok(exit::OK)
    }

    /// STATUS of one cluster or of all; with `watch`, again every two
    /// seconds until Ctrl-C (on a terminal the screen is redrawn; otherwise
    /// each answer that changed is printed).
    pub async fn status(&self, cluster: Option<&str>, watch: bool) -> Result<u8> {
        if !watch {
            let shown = self.status_text(cluster).await?;
            print!("{}", shown.out);
            eprint!("{}", shown.notes);
            return Ok(exit::OK);
        }
        let terminal = std::io::stdout().is_terminal() && self.output == Output::Text;
        // One handler for the whole watch: a Ctrl-C while a request is
        // under way counts too.
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        let mut last: Option<String> = None;
        loop {
            let shown = tokio::select! {
                shown = self.status_text(cluster) => shown?,
                _ = &mut interrupted => return Ok(exit::OK),
            };
            // On a terminal the screen is redrawn each time (its relative
            // times move on); elsewhere only a changed answer is printed.
            if terminal || last.as_ref() != Some(&shown.raw) {
                if terminal {
                    print!(
                        "\x1b[H\x1b[2J{}  (every 2s; Ctrl-C stops)\n\n",
                        Utc::now().format("%H:%M:%S")
                    );
                }
                print!("{}", shown.out);
                eprint!("{}", shown.notes);
                let _ = std::io::stdout().flush();
                last = Some(shown.raw);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = &mut interrupted => return Ok(exit::OK),
            }
        }
    }

    /// What STATUS prints, and what it says on standard error.
    async fn status_text(&self, cluster: Option<&str>) -> Result<Shown> {
        let now = Utc::now();
        let mut out = String::new();
        let mut notes = String::new();
        let answer;
        match cluster {
            Some(c) => {
                let (status, raw) = self
                    .send::<ClusterStatus>(
                        self.http
                            .get(self.url(&format!("/api/v1/clusters/{c}")))
                            .query(&[("events", RECENT_EVENTS)]),
                    )
                    .await?;
                answer = raw.clone();
                match self.output {
                    Output::Json => out = format!("{}\n", raw.trim()),
                    Output::Text => {
                        for line in status_lines(&status, now) {
                            out += &format!("{line}\n");
                        }
                        if let Some(line) = absence_line(&status) {
                            out += &format!("{line}\n");
                        }
                    }
                }
            }
            None => {
                let (list, raw) = self
                    .send::<ClusterList>(self.http.get(self.url("/api/v1/clusters")))
                    .await?;
                answer = raw.clone();
                let anonymous = self.session.source == Source::Anonymous;
                match self.output {
                    Output::Json => out = format!("{}\n", raw.trim()),
                    Output::Text if list.clusters.is_empty() && anonymous => out = "no public clusters; not signed in, so only public clusters are shown (sign in with `flotilla login`, or set FLOTILLA_TOKEN)\n".to_owned(),
                    Output::Text if list.clusters.is_empty() => out = "no clusters\n".to_owned(),
                    Output::Text => {
                        if anonymous {
                            notes = "not signed in: only public clusters are shown (sign in with `flotilla login`)\n".to_owned();
                        }
                        out += &clusters_table(&list.clusters, now);
                    }
                }
            }
        }
        Ok(Shown {
            raw: answer,
            out,
            notes,
        })
    }

    fn settled_exit(&self, status: &ClusterStatus) -> u8 {
        if status.settled == Some(false) {
            if self.output == Output::Text {
                eprintln!(
                    "{} did not settle before the server's max_wait; it is still {}",
                    status.cluster,
                    status.state.as_str()
                );
                if let Some(e) = &status.error {
                    eprintln!("in its way:\n{}", error_line(e, Utc::now()));
                }
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
                for line in status_lines(s, Utc::now()) {
                    println!("{line}");
                }
            }
        }
    }

    /// While a waiting request runs, shows on a terminal how long it has
    /// waited, how many nodes boot and are ready of those wanted, and what
    /// stands in the way: its message whole on a line of its own each time
    /// it changes, its code and count on the progress line. Each poll takes
    /// a fresh bearer, so a long wait refreshes the login as it goes. Best
    /// effort: a failed poll just skips a beat.
    async fn show_progress(&self, cluster: &str) -> std::convert::Infallible {
        let url = self.url(&format!("/api/v1/clusters/{cluster}"));
        let start = std::time::Instant::now();
        let mut shown: Option<(String, String)> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut req = self.http.get(&url);
            if let Ok(Some(token)) = self.bearer().await {
                req = req.bearer_auth(token);
            }
            let Ok(resp) = req.send().await else {
                continue;
            };
            let Ok(s) = resp.json::<ClusterStatus>().await else {
                continue;
            };
            let now = s
                .error
                .as_ref()
                .map(|e| (e.code.clone(), e.message.clone()));
            if now.is_some() && now != shown {
                if let Some(e) = &s.error {
                    eprintln!("\r\x1b[K{}", error_line(e, Utc::now()).trim_start());
                }
            }
            shown = now;
            let mut line = progress_line(&s, start.elapsed(), Utc::now());
            if let Some(cut) = line.char_indices().nth(terminal_width().saturating_sub(1)) {
                line.truncate(cut.0);
            }
            eprint!("\r\x1b[K{line}");
            let _ = std::io::stderr().flush();
        }
    }
}

/// The columns of the terminal on stderr, or 80.
fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills the winsize it is given, and nothing else.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 20 {
        usize::from(size.ws_col)
    } else {
        80
    }
}

/// `NAME: deploying 12s, 1 booting, 1/3 ready; cloud_refused (3×), next
/// try in 4s`.
fn progress_line(s: &ClusterStatus, elapsed: Duration, now: DateTime<Utc>) -> String {
    let booting = s
        .nodes
        .iter()
        .filter(|n| n.state == flotilla_api_types::NodeState::Booting)
        .count();
    let mut line = format!(
        "{}: {} {}, {booting} booting, {}/{} ready",
        s.cluster,
        s.state.as_str(),
        span(elapsed),
        s.ready_nodes(),
        s.node_capacity
    );
    if let Some(e) = &s.error {
        line.push_str(&format!(
            "; {} ({}×), {}",
            e.code,
            e.count,
            retry_text(e, now)
        ));
    }
    line
}

/// `45s`, `3m05s`, `1h02m`, `3d04h`.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// What stands in a cluster's way, in a line: the message, how often and
/// since when, and when the server tries again.
fn error_line(e: &flotilla_api_types::ClusterError, now: DateTime<Utc>) -> String {
    let times = if e.count == 1 {
        format!("at {}", stamp(e.since))
    } else {
        format!("{} times since {}", e.count, stamp(e.since))
    };
    format!(
        "  error {}: {} ({times}; {})",
        e.code,
        e.message,
        retry_text(e, now)
    )
}

/// When the server tries again.
fn retry_text(e: &flotilla_api_types::ClusterError, now: DateTime<Utc>) -> String {
    match e.retry_at {
        Some(at) if at > now => format!(
            "next try in {}",
            span((at - now).to_std().unwrap_or_default())
        ),
        Some(_) => "trying again now".to_owned(),
        None => "tried again once something changes".to_owned(),
    }
}

/// A refusal of `deploy` or `extend` said in the command's flags rather
/// than the API's field names: `--public`, not `is_public`.
fn in_flags(mut f: Failure) -> Failure {
    for (field, flag) in [
        ("deploy with is_public false", "deploy without --public"),
        ("is_public", "--public"),
        ("time_to_live", "--ttl"),
        ("node_capacity", "--nodes"),
    ] {
        f.message = replace_word(&f.message, field, flag);
    }
    f
}

/// `text` with `word` replaced where it stands as a word of its own (not
/// inside an error code such as `invalid_node_capacity`).
fn replace_word(text: &str, word: &str, with: &str) -> String {
    let part_of_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(word) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + word.len()..].chars().next();
        out.push_str(&rest[..at]);
        if before.is_some_and(part_of_word) || after.is_some_and(part_of_word) {
            out.push_str(word);
        } else {
            out.push_str(with);
        }
        rest = &rest[at + word.len()..];
    }
    out.push_str(rest);
    out
}

/// A success's body as `T`.
fn parse<T: serde::de::DeserializeOwned>(text: String) -> Result<(T, String)> {
    let value = serde_json::from_str(&text).map_err(|e| Failure::new(exit::FAILED, format!("the server's answer is not what this client expects ({e}); are client and server the same version?")))?;
    Ok((value, text))
}

fn cached(t: TokenResponse) -> CachedLogin {
    CachedLogin {
        username: t.username,
        access_token: t.access_token,
        issued_at: Utc::now(),
        expires_at: t.expires_at,
        refresh_token: t.refresh_token,
        refresh_expires_at: t.refresh_expires_at,
    }
}

fn user_line(u: &UserView) -> String {
    let mut line = format!("{:<24} {:<14} {:<7}", u.username, u.level.as_str(), u.kind);
    if !u.grants.is_empty() {
        line.push_str(&format!(" grants {}", u.grants.join(", ")));
    }
    line
}

/// Parses a level as the API names it.
pub fn parse_level(s: &str) -> std::result::Result<Level, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("{s:?} is not a level; use github_member, org_member or admin"))
}

/// A JSON document as TOML (as a pool file is written).
fn toml_of(document: &serde_json::Value) -> String {
    toml::to_string(document)
        .unwrap_or_else(|_| serde_json::to_string_pretty(document).unwrap_or_default() + "\n")
}

/// `pools`: a row per pool and instance type (the cheapest, made first,
/// on the pool's own row).
fn pools_table(pools: &[PoolView]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    for p in pools {
        let types = if p.types.is_empty() {
            // A server from before pools had several types.
            vec![PoolTypeView {
                instance_type: p.instance_type.clone(),
                price_per_hour: p.price_per_hour.clone(),
                shape: p.shape,
                spot_price: p.spot_price.clone(),
            }]
        } else {
            p.types.clone()
        };
        for (i, t) in types.iter().enumerate() {
            let first = i == 0;
            let own = |s: String| if first { s } else { String::new() };
            rows.push(vec![
                own(p.name.clone()),
                own(p.driver.clone()),
                t.instance_type.clone(),
                format!("{}/h", rate(&t.price_per_hour)),
                t.shape.as_ref().map_or("-".into(), |s| {
                    format!("{} vCPU {} MiB", s.vcpus, s.memory_mib)
                }),
                t.spot_price.as_ref().map_or("-".into(), |spot| {
                    format!(
                        "spot ${:.4}/h ({})",
                        spot.usd_per_hour, spot.availability_zone
                    )
                }),
                own(if p.default { "default" } else { "" }.to_owned()),
                own(p.source.clone()),
            ]);
        }
    }
    table(
        &[
            "POOL",
            "DRIVER",
            "INSTANCE TYPE",
            "PRICE",
            "NODE",
            "SPOT",
            "",
            "SOURCE",
        ],
        &rows,
    )
}

/// For a cluster with no record and no nodes (STATUS answers
/// `not_running` for any valid name): whether it was ever deployed, as far
/// as its recent changes tell.
fn absence_line(s: &ClusterStatus) -> Option<String> {
    let absent = s.state == flotilla_api_types::ClusterState::NotRunning
        && s.nodes.is_empty()
        && s.pool.is_none()
        && s.org.is_none();
    if !absent {
        return None;
    }
    Some(match s.recent_events.last() {
        None => format!(
            "  never deployed: `flotilla deploy {} --nodes N --ttl T` creates it",
            s.cluster
        ),
        Some(e) => format!(
            "  not deployed now (its last change: {} at {})",
            e.kind,
            e.at.format("%Y-%m-%dT%H:%M:%SZ")
        ),
    })
}

/// A cluster's rollout in a line: how many nodes are outdated and what
/// becomes of them.
fn rollout_line(r: &flotilla_api_types::ClusterRollout, pool: &str) -> String {
    let nodes = if r.outdated == 1 { "node" } else { "nodes" };
    let what = match r.state.as_str() {
        "paused" => format!(
            "rollout paused by {}: they stay until `flotilla pool resume {pool}`",
            r.by.as_deref().unwrap_or("someone")
        ),
        "stopped" => format!(
            "rollout stopped: {}; they stay until `flotilla pool resume {pool}` or the pool changes",
            r.reason.as_deref().unwrap_or("replacements kept failing")
        ),
        _ => "being replaced".to_owned(),
    };
    format!(
        "  {} {nodes} outdated (pool {pool} is at {} now): {what}",
        r.outdated, r.pool_version
    )
}

/// What one STATUS read prints.
struct Shown {
    /// The server's answer, to tell a change from the clock moving on.
    raw: String,
    out: String,
    notes: String,
}

/// One cluster's STATUS in text: its summary, what stands in its way, its
/// organisation's part, its nodes and its recent events.
fn status_lines(s: &ClusterStatus, now: DateTime<Utc>) -> Vec<String> {
    let mut lines = vec![summary_line(s, now)];
    if let Some(e) = &s.error {
        lines.push(error_line(e, now));
    }
    if let Some(org) = &s.org {
        lines.extend(org_status_lines(org));
    }
    if let Some(w) = &s.workload {
        let port = w.port.map_or(String::new(), |p| format!(" (port {p})"));
        lines.push(format!("  workload{port}: {}", w.command));
    }
    if let Some(r) = &s.rollout {
        lines.push(rollout_line(r, s.pool.as_deref().unwrap_or("its pool")));
    }
    for n in &s.nodes {
        let mut line = format!(
            "  {:<24} {:<13} {:<22} {:<14} launched {} ({})",
            n.id,
            n.state.as_str(),
            n.address.as_deref().unwrap_or("-"),
            n.instance_type,
            stamp(n.launched_at),
            relative(n.launched_at, now)
        );
        if let Some(at) = &n.workload_address {
            line.push_str(&format!("  workload at {at}"));
        }
        if n.outdated {
            line.push_str("  outdated");
        }
        lines.push(line);
    }
    if !s.recent_events.is_empty() {
        lines.push("recent events:".to_owned());
        for e in &s.recent_events {
            lines.push(format!("  {}", event_line(e)));
        }
    }
    lines
}

/// Rows under a header, each column as wide as its widest cell, two
/// spaces apart; the last column is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (k, cell) in cells.into_iter().enumerate() {
            if k == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[k]));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Where `ssh` reaches one node.
struct SshTarget {
    node: String,
    user: String,
    host: Option<String>,
}

impl SshTarget {
    /// A node's address is an IP or a name, or `HOST:PORT` where the port
    /// is its agent's, not ssh's: ssh gets the host alone (and its own
    /// port, 22 unless the user's ssh config says).
    fn of(user: &str, node: &flotilla_api_types::NodeStatus) -> SshTarget {
        let host =
            node.address
                .as_deref()
                .map(|address| match address.parse::<std::net::SocketAddr>() {
                    Ok(a) => a.ip().to_string(),
                    Err(_) => address.to_owned(),
                });
        SshTarget {
            node: node.id.clone(),
            user: user.to_owned(),
            host,
        }
    }
}

/// How often `logs --follow` asks again when a node printed nothing new.
const LOGS_POLL: Duration = Duration::from_secs(1);

/// The exit status of `exec`: the command's, or 128 + the signal that
/// killed it (as a shell reports it).
fn exec_status(answer: &ExecResponse) -> u8 {
    match (answer.exit_code, answer.signal) {
        (Some(code), _) => u8::try_from(code.clamp(0, 255)).unwrap_or(exit::FAILED),
        (None, Some(signal)) => u8::try_from((128 + signal).clamp(0, 255)).unwrap_or(exit::FAILED),
        (None, None) => exit::FAILED,
    }
}

/// `in 29m`, `3m ago`, `just now`: how far `at` is from `now`, to the
/// unit that matters.
fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let (d, ahead) = if at >= now {
        ((at - now).to_std().unwrap_or_default(), true)
    } else {
        ((now - at).to_std().unwrap_or_default(), false)
    };
    let amount = match d.as_secs() {
        0..5 => return "just now".to_owned(),
        // Minutes alone: a time this far off needs no seconds.
        s @ 60..3600 => format!("{}m", s / 60),
        _ => span(d),
    };
    if ahead {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// `status` of every cluster: one row each.
fn clusters_table(clusters: &[ClusterStatus], now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = clusters
        .iter()
        .map(|s| {
            let mut notes = Vec::new();
            if s.is_public {
                notes.push("public".to_owned());
            }
            if let Some(o) = &s.org {
                notes.push(format!(
                    "organisation, min {} max {}",
                    o.min_nodes, o.max_nodes
                ));
            }
            if let Some(e) = &s.error {
                notes.push(format!("error {}", e.code));
            }
            vec![
                s.cluster.clone(),
                s.state.as_str().to_owned(),
                format!("{}/{}", s.ready_nodes(), s.node_capacity),
                s.pool.clone().unwrap_or_else(|| "-".into()),
                s.expires_at.map_or("-".into(), |at| relative(at, now)),
                notes.join(", "),
            ]
        })
        .collect();
    table(
        &["CLUSTER", "STATE", "READY", "POOL", "EXPIRES", "NOTES"],
        &rows,
    )
}

fn summary_line(s: &ClusterStatus, now: DateTime<Utc>) -> String {
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
        line.push_str(&format!("  expires {} ({})", relative(at, now), stamp(at)));
    }
    if let Some(o) = &s.org {
        line.push_str(&format!("  min {} max {}", o.min_nodes, o.max_nodes));
    }
    if let Some(e) = &s.error {
        line.push_str(&format!("  error {}", e.code));
    }
    line
}

/// What status adds for an organisation's cluster: its active requests,
/// when its size next changes, and what to do next.
fn org_status_lines(o: &OrgClusterStatus) -> Vec<String> {
    let mut lines: Vec<String> = o
        .requests
        .iter()
        .map(|r| {
            format!(
                "  request {} {} until {}",
                r.user,
                nodes(r.nodes),
                stamp(r.expires_at)
            )
        })
        .collect();
    if let Some(at) = o.next_change {
        lines.push(format!("  next change {}", stamp(at)));
    }
    if let Some(hint) = &o.hint {
        lines.push(format!("  hint: {hint}"));
    }
    lines
}

/// `flotilla scale`'s one line: the request, its expiry, the cluster's
/// size now, and why it was cut if it was.
fn capacity_line(c: &CapacityResponse) -> String {
    let s = &c.status;
    let mut line = format!(
        "{}: requested {} until {}; the cluster wants {} now, {} ready ({})",
        c.cluster,
        nodes(c.requested),
        stamp(c.expires_at),
        nodes(s.node_capacity),
        s.ready_nodes(),
        s.state.as_str()
    );
    if c.clamped {
        line.push_str("; ");
        match &c.message {
            Some(m) => line.push_str(m),
            None => line.push_str(&format!("capped at max_nodes = {}", c.max_nodes)),
        }
    }
    line
}

fn settings_text(v: &OrgView) -> String {
    let s = &v.settings;
    format!(
        "min_nodes {}, max_nodes {} (limit {}), pool {}",
        s.min_nodes, s.max_nodes, s.node_limit, s.pool
    )
}

fn budget_text(v: &OrgView) -> String {
    let b = &v.budget;
    format!(
        "balance {}, monthly allowance {} up to a balance of {}, shutdown threshold {}, min runway {}",
        dollars(&b.balance),
        dollars(&b.monthly_allowance),
        dollars(&b.max_balance),
        dollars(&b.shutdown_threshold),
        humantime::format_duration(Duration::from_secs(b.min_runway))
    )
}

/// `flotilla org show`, for people.
fn org_lines(v: &OrgView, now: DateTime<Utc>) -> Vec<String> {
    let mut lines = vec![format!(
        "organisation {} (cluster {}), created {}",
        v.name,
        v.cluster,
        stamp(v.created_at)
    )];
    lines.push("members:".into());
    for m in &v.members {
        lines.push(format!("  {:<24} {}", m.username, m.role));
    }
    if !v.pending.is_empty() {
        lines.push("asking to join:".into());
        for p in &v.pending {
            lines.push(format!(
                "  {:<24} since {}  (flotilla org approve|refuse {} {})",
                p.username,
                stamp(p.since),
                v.name,
                p.username
            ));
        }
    }
    lines.push(format!("settings: {}", settings_text(v)));
    lines.push(format!("budget: {}", budget_text(v)));
    if let Some(at) = v.budget.exhausted_at {
        lines.push(format!(
            "  shut down for lack of money since {}; an admin can add credit with `flotilla org credit {} AMOUNT --reason TEXT`",
            stamp(at),
            v.name
        ));
    }
    let f = &v.forecast;
    lines.push(match f.hours_left {
        Some(h) => format!(
            "forecast: {} running at up to {}/h each, burning {}/h; the balance lasts about {}",
            nodes(f.running_nodes as u32),
            rate(&f.price_per_hour),
            rate(&f.burn_per_hour),
            hours(h)
        ),
        None => format!(
            "forecast: {} running at up to {}/h each, burning {}/h; nothing is spending",
            nodes(f.running_nodes as u32),
            rate(&f.price_per_hour),
            rate(&f.burn_per_hour)
        ),
    });
    let mut cluster = format!(
        "cluster: size {}{}, {} active {}",
        v.size,
        if v.asleep { " (asleep)" } else { "" },
        v.requests.len(),
        if v.requests.len() == 1 {
            "request"
        } else {
            "requests"
        }
    );
    if let Some(at) = v.next_change {
        cluster.push_str(&format!(", next change {}", stamp(at)));
        if at > now {
            let left = (at - now).to_std().unwrap_or_default();
            let left = Duration::from_secs(left.as_secs());
            cluster.push_str(&format!(" (in {})", humantime::format_duration(left)));
        }
    }
    lines.push(cluster);
    for r in &v.requests {
        lines.push(format!(
            "  request {} {} until {}",
            r.user,
            nodes(r.nodes),
            stamp(r.expires_at)
        ));
    }
    if !v.events.is_empty() {
        lines.push("recent events:".into());
        for e in &v.events {
            lines.push(format!("  {}  {:<18} {}", stamp(e.at), e.kind, e.message));
        }
    }
    lines
}

/// How often `job submit --wait` looks at the job between its logs.
const JOB_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// One subscription on a line.
fn subscription_line(s: &SubscriptionView) -> String {
    format!(
        "{:>4}  {:<8} {:<40} {}{}{}",
        s.id,
        s.channel,
        s.target,
        s.events.join(","),
        if s.account.is_empty() {
            String::new()
        } else {
            format!("  ({})", s.account)
        },
        if s.disabled_at.is_some() {
            "  DISABLED"
        } else {
            ""
        }
    )
}

/// One delivery on a line.
fn delivery_line(d: &DeliveryView) -> String {
    let to = if d.subscription == 0 {
        "admin".to_owned()
    } else {
        format!("#{}", d.subscription)
    };
    let mut line = format!(
        "{:>6}  {}  {:<6} {:<24} {:<20} {:<12}",
        d.id,
        stamp(d.created_at),
        to,
        d.kind,
        d.key,
        d.state
    );
    if let (Some(at), "pending", 1..) = (d.next_at, d.state.as_str(), d.attempts) {
        line.push_str(&format!(
            " ({} {} so far; next {})",
            d.attempts,
            if d.attempts == 1 { "try" } else { "tries" },
            stamp(at)
        ));
    }
    if let Some(e) = &d.last_error {
        line.push_str(&format!(": {e}"));
    }
    line
}

/// One schedule on a line.
fn schedule_line(s: &ScheduleView) -> String {
    format!(
        "{:<20} {:<16} {} {} at {}  {}",
        s.name,
        s.cron,
        s.template,
        s.cluster,
        s.version,
        if s.paused {
            "paused".to_owned()
        } else {
            s.next_at.map_or("no next time".to_owned(), |at| {
                format!("next {}", stamp(at))
            })
        }
    )
}

/// One job on a line: number, state, name, and why it waits.
fn job_line(j: &JobView) -> String {
    let mut line = format!("{:>6}  {:<10} {}", j.id, j.state, j.name);
    if let Some(p) = &j.position {
        line.push_str(&format!("  (position {} of {})", p.place, p.of));
    }
    if let Some(reason) = &j.reason {
        line.push_str(&format!("  {reason}"));
    }
    line
}

/// How many of a cluster's latest changes `flotilla status CLUSTER` shows.
const RECENT_EVENTS: usize = 10;

/// One change: number, time, kind, key and what it left.
fn event_line(e: &Event) -> String {
    let d = &e.details;
    let detail = match e.kind.split_once('.').map_or("", |(entity, _)| entity) {
        "cluster" if e.kind == "cluster.nodes" => {
            let instances: Vec<String> = d["instances"]
                .as_array()
                .map(|all| {
                    all.iter()
                        .map(|i| {
                            format!(
                                "{} {}",
                                i["id"].as_str().unwrap_or("?"),
                                i["state"].as_str().unwrap_or("?")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "{}/{} ready: {}",
                d["ready"],
                d["total"],
                if instances.is_empty() {
                    "no nodes".to_owned()
                } else {
                    instances.join(", ")
                }
            )
        }
        "server" => format!("leads, epoch {}", d["epoch"]),
        "pool" if e.kind == "pool.rollout_stopped" => format!(
            "at version {}: {}",
            d["version"].as_str().unwrap_or("?"),
            d["reason"].as_str().unwrap_or("?")
        ),
        "pool" if e.kind.starts_with("pool.rollout_") => {
            format!("by {}", d["by"].as_str().unwrap_or("?"))
        }
        "pool" => format!(
            "version {} by {}",
            d["version"],
            d["by"].as_str().unwrap_or("?")
        ),
        "cluster" if e.kind == "cluster.error" => format!(
            "{} ({}×): {}",
            d["code"].as_str().unwrap_or("?"),
            d["count"],
            d["message"].as_str().unwrap_or_default()
        ),
        "cluster" if d.get("nodes").is_some() => format!(
            "{} nodes, pool {}{}",
            d["nodes"],
            d["pool"].as_str().unwrap_or("?"),
            d["expires_at"]
                .as_str()
                .map_or(String::new(), |at| format!(", expires {at}"))
        ),
        "org" => d["message"].as_str().unwrap_or_default().to_owned(),
        "job" => format!(
            "{} ({}): {}",
            d["name"].as_str().unwrap_or("?"),
            d["state"].as_str().unwrap_or("?"),
            d["message"].as_str().unwrap_or_default()
        ),
        "schedule" => d["message"].as_str().unwrap_or_default().to_owned(),
        "account" => format!("level {}", d["level"].as_str().unwrap_or("?")),
        _ => String::new(),
    };
    format!(
        "{:>6}  {}  {:<26} {:<20} {}",
        e.seq,
        stamp(e.at),
        e.kind,
        e.key,
        detail
    )
    .trim_end()
    .to_owned()
}

fn stamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn nodes(n: u32) -> String {
    if n == 1 {
        "1 node".into()
    } else {
        format!("{n} nodes")
    }
}

fn hours(h: f64) -> String {
    if h >= 48.0 {
        format!("{:.1} days", h / 24.0)
    } else {
        format!("{h:.1} hours")
    }
}

/// The API's exact dollars ("25.00", "-3.504", "0.000125") as an amount
/// for people, rounded to the cent (`Money::cents`: "$25.00", "-$3.50",
/// "$0.00"). `--output json` keeps every digit.
fn dollars(amount: &str) -> String {
    match amount.parse::<Money>() {
        Ok(m) => m.cents().to_string(),
        Err(_) => amount.to_owned(),
    }
}

/// The API's dollars as a rate, every digit kept ("$0.0104"): a price per
/// hour below a cent is still a price.
fn rate(amount: &str) -> String {
    match amount.parse::<Money>() {
        Ok(m) => m.dollars().to_string(),
        Err(_) => amount.to_owned(),
    }
}

/// Parses a signed amount of dollars (`org credit`): "25", "25.00",
/// "-3.50", "$10"; at most six decimals (a micro-dollar). Returns it as
/// the API takes it.
pub fn parse_amount(s: &str) -> std::result::Result<String, String> {
    let (sign, rest) = match s.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", s.strip_prefix('+').unwrap_or(s)),
    };
    let digits = rest.strip_prefix('$').unwrap_or(rest);
    if digits.starts_with(['+', '-']) || digits.parse::<Money>().is_err() {
        return Err(format!(
            "{s:?} is not an amount of dollars; use e.g. 25, 25.00 or -3.50 (at most six decimals)"
        ));
    }
    Ok(format!("{sign}{digits}"))
}

/// Parses an amount of dollars that may not be negative (budget settings).
pub fn parse_dollars(s: &str) -> std::result::Result<String, String> {
    let amount = parse_amount(s)?;
    if amount.starts_with('-') {
        return Err(format!("{s:?} is negative; use e.g. 0, 10 or 50.00"));
    }
    Ok(amount)
}

/// Parses `--ttl` ("90s", "10m", "2h", or plain seconds).
pub fn parse_ttl(s: &str) -> std::result::Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{e}; use a duration such as 90s, 10m or 2h"))
}

#[cfg(test)]
mod tests {

    #[test]
    fn times_read_as_distances_from_now() {
        let now = at("2030-01-02T03:04:05Z");
        let secs = |n: i64| now + chrono::Duration::seconds(n);
        assert_eq!(relative(secs(2), now), "just now");
        assert_eq!(relative(secs(45), now), "in 45s");
        assert_eq!(relative(secs(-29 * 60 - 5), now), "29m ago");
        assert_eq!(relative(secs(2 * 3600 + 3 * 60), now), "in 2h03m");
        assert_eq!(relative(secs(-(3 * 86400 + 4 * 3600)), now), "3d04h ago");
    }

    #[test]
    fn refusals_speak_of_flags_not_fields() {
        let f = in_flags(Failure::new(
            exit::USAGE,
            "node_capacity must be between 1 and 100, got 0 (invalid_node_capacity); only admins may deploy public clusters; deploy with is_public false; org_member accounts may set a time_to_live of at most 12h",
        ));
        assert_eq!(
            f.message,
            "--nodes must be between 1 and 100, got 0 (invalid_node_capacity); only admins may deploy public clusters; deploy without --public; org_member accounts may set a --ttl of at most 12h"
        );
    }

    use flotilla_api_types::{CapacityRequestStatus, ClusterState};

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn rollout_events_say_who_and_why() {
        let event = |kind: &str, details: serde_json::Value| flotilla_api_types::Event {
            seq: 1,
            kind: kind.into(),
            key: "web".into(),
            at: at("2030-01-02T03:04:05Z"),
            details,
        };
        let paused = event_line(&event(
            "pool.rollout_paused",
            serde_json::json!({"by": "olga"}),
        ));
        assert!(paused.ends_with("by olga"), "{paused}");
        let stopped = event_line(&event(
            "pool.rollout_stopped",
            serde_json::json!({"version": "00c0ffee00c0ffee", "reason": "3 replacements in a row failed"}),
        ));
        assert!(
            stopped.ends_with("at version 00c0ffee00c0ffee: 3 replacements in a row failed"),
            "{stopped}"
        );
    }

    #[test]
    fn a_rollout_says_how_many_nodes_are_outdated_and_what_becomes_of_them() {
        let mut r = flotilla_api_types::ClusterRollout {
            state: "rolling".into(),
            outdated: 2,
            pool_version: "00c0ffee00c0ffee".into(),
            reason: None,
            by: None,
            since: None,
        };
        assert_eq!(
            rollout_line(&r, "web"),
            "  2 nodes outdated (pool web is at 00c0ffee00c0ffee now): being replaced"
        );
        r.state = "stopped".into();
        r.reason = Some("3 replacements in a row failed".into());
        let line = rollout_line(&r, "web");
        assert!(
            line.contains("rollout stopped: 3 replacements in a row failed"),
            "{line}"
        );
        assert!(line.contains("flotilla pool resume web"), "{line}");
    }

    fn org_cluster(state: ClusterState, hint: Option<&str>) -> ClusterStatus {
        ClusterStatus {
            cluster: "team".into(),
            state,
            is_public: false,
            node_capacity: 2,
            pool: Some("default".into()),
            expires_at: None,
            nodes: Vec::new(),
            settled: None,
            recent_events: Vec::new(),
            error: None,
            ssh_user: None,
            workload: None,
            rollout: None,
            org: Some(OrgClusterStatus {
                min_nodes: 0,
                max_nodes: 2,
                requests: vec![CapacityRequestStatus {
                    user: "alice".into(),
                    nodes: 5,
                    expires_at: at("2030-01-02T03:04:05Z"),
                }],
                next_change: Some(at("2030-01-02T03:04:05Z")),
                shut_down: false,
                hint: hint.map(str::to_owned),
            }),
        }
    }

    #[test]
    fn amounts_are_dollars_with_an_optional_sign() {
        for (given, sent) in [
            ("25", "25"),
            ("25.00", "25.00"),
            ("-3.50", "-3.50"),
            ("+4", "4"),
            ("$10", "10"),
            ("-$0.25", "-0.25"),
            (".5", ".5"),
            ("0.000001", "0.000001"),
        ] {
            assert_eq!(parse_amount(given).as_deref(), Ok(sent), "{given}");
        }
        for bad in [
            "",
            "-",
            "$",
            ".",
            "abc",
            "1.2.3",
            "1e3",
            "1,000",
            "0.0000001",
            "--3",
            "3-",
            " 3",
            "NaN",
        ] {
            let err = parse_amount(bad).unwrap_err();
            assert!(err.contains("not an amount of dollars"), "{bad}: {err}");
        }
    }

    #[test]
    fn budget_settings_may_not_be_negative() {
        assert_eq!(parse_dollars("50.00").as_deref(), Ok("50.00"));
        assert_eq!(parse_dollars("0").as_deref(), Ok("0"));
        assert!(parse_dollars("-1").unwrap_err().contains("negative"));
        assert!(parse_dollars("ten").is_err());
    }

    #[test]
    fn dollars_read_as_money() {
        assert_eq!(dollars("25.00"), "$25.00");
        assert_eq!(dollars("-3.50"), "-$3.50");
        assert_eq!(dollars("-7.135"), "-$7.14", "rounded to the cent");
        assert_eq!(rate("0.0104"), "$0.0104", "every digit");
        assert_eq!(dollars("lots"), "lots", "shown as the server said");
    }

    #[test]
    fn tables_have_a_header_and_aligned_columns() {
        let rows = vec![
            vec!["demo".to_owned(), "running".to_owned(), "".to_owned()],
            vec![
                "a-longer-name".to_owned(),
                "deploying".to_owned(),
                "public".to_owned(),
            ],
        ];
        assert_eq!(
            table(&["CLUSTER", "STATE", "NOTES"], &rows),
            "CLUSTER        STATE      NOTES\n\
             demo           running\n\
             a-longer-name  deploying  public\n"
        );
    }

    #[test]
    fn a_clamped_request_says_so_on_its_one_line() {
        let answer = CapacityResponse {
            cluster: "team".into(),
            requested: 5,
            clamped: true,
            max_nodes: 2,
            expires_at: at("2030-01-02T03:04:05Z"),
            message: Some("asked for 5 nodes; the cluster is capped at max_nodes = 2".into()),
            status: org_cluster(ClusterState::Deploying, None),
        };
        let line = capacity_line(&answer);
        assert_eq!(
            line,
            "team: requested 5 nodes until 2030-01-02T03:04:05Z; the cluster wants 2 nodes now, 0 ready (deploying); asked for 5 nodes; the cluster is capped at max_nodes = 2"
        );
        let answer = CapacityResponse {
            clamped: false,
            message: None,
            requested: 1,
            ..answer
        };
        assert!(!capacity_line(&answer).contains("capped"));
        assert!(capacity_line(&answer).contains("requested 1 node until"));
    }

    #[test]
    fn an_organisation_cluster_shows_bounds_requests_next_change_and_hint() {
        let status = org_cluster(ClusterState::Asleep, Some("asleep at zero nodes; wake it"));
        assert!(summary_line(&status, Utc::now()).ends_with("  min 0 max 2"));
        assert_eq!(
            org_status_lines(status.org.as_ref().unwrap()),
            [
                "  request alice 5 nodes until 2030-01-02T03:04:05Z",
                "  next change 2030-01-02T03:04:05Z",
                "  hint: asleep at zero nodes; wake it",
            ]
        );
        let plain = ClusterStatus {
            org: None,
            ..status
        };
        assert!(!summary_line(&plain, Utc::now()).contains("min"));
    }
}
