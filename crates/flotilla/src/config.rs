//! The server's configuration: TOML, unknown keys refused, durations as
//! human strings. Values go through the same constructors the API uses, so
//! a config cannot hold what a request could not.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flotilla_cloud::fake::FakeConfig;
use flotilla_control::{PoolCatalog, PoolDriver};
use flotilla_domain::{Level, LevelLimits, LevelPolicy, Limits, PoolName, PoolSource, Timeouts};
use flotilla_driver_ec2::{Ec2Config, Ec2PoolOptions};
use flotilla_engine::{EngineConfig, PoolSpec};
use serde::{Deserialize, Deserializer};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";

/// `flotilla config init`: every key at its default, commented.
pub const TEMPLATE: &str = include_str!("config_template.toml");
pub const DEFAULT_DATA_DIR: &str = "flotilla-data";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    default_pool: Option<String>,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    engine: EngineSection,
    #[serde(default)]
    drivers: BTreeMap<String, DriverConfig>,
    /// Each checked against its driver's schema ([`PoolCatalog`]).
    #[serde(default)]
    pools: BTreeMap<String, toml::Table>,
    #[serde(default)]
    auth: AuthSection,
    github: Option<GithubSection>,
    #[serde(default)]
    levels: LevelsSection,
    #[serde(default)]
    orgs: OrgsSection,
    #[serde(default)]
    events: EventsSection,
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    jobs: JobsSection,
    #[serde(default)]
    dropbox: DropboxSection,
    #[serde(default)]
    notify: NotifySection,
}

/// `[notify]`: how notifications are sent (webhooks need nothing here;
/// mail needs `[notify.smtp]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct NotifySection {
    /// Told of every cluster created and deleted (seed 003).
    admin_email: Option<String>,
    /// What `admin_email` is told of.
    admin_events: String,
    /// The same event of the same record is sent to a subscription once
    /// within this window.
    #[serde(with = "humantime_serde")]
    dedup_window: Duration,
    /// At most one mail per subscription within this window: what comes
    /// meanwhile goes in the next, as one digest.
    #[serde(with = "humantime_serde")]
    digest_window: Duration,
    /// The wait before the first retry, doubled for each after.
    #[serde(with = "humantime_serde")]
    retry_base: Duration,
    /// Tries of one delivery before it is given up.
    max_attempts: u32,
    /// Deliveries given up in a row before a subscription is disabled.
    disable_after: u32,
    /// How long one try may take.
    #[serde(with = "humantime_serde")]
    timeout: Duration,
    /// How long finished deliveries are kept to be shown.
    #[serde(with = "humantime_serde")]
    keep: Duration,
    smtp: Option<SmtpSection>,
}

impl Default for NotifySection {
    fn default() -> Self {
        Self {
            admin_email: None,
            admin_events: "cluster.deployed,cluster.destroyed,cluster.expired".to_owned(),
            dedup_window: Duration::from_secs(300),
            digest_window: Duration::from_secs(60),
            retry_base: Duration::from_secs(10),
            max_attempts: 6,
            disable_after: 5,
            timeout: Duration::from_secs(10),
            keep: Duration::from_secs(7 * 86_400),
            smtp: None,
        }
    }
}

/// `[notify.smtp]`: the relay mail goes through.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmtpSection {
    host: String,
    port: Option<u16>,
    /// `starttls` (default), `tls`, or `none` (a relay on this machine).
    #[serde(default = "default_smtp_tls")]
    tls: String,
    username: Option<String>,
    /// The password's file; `FLOTILLA_SMTP_PASSWORD` wins over it.
    password_file: Option<PathBuf>,
    /// The sender's address.
    from: String,
}

fn default_smtp_tls() -> String {
    "starttls".to_owned()
}

/// Notifications as configured.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pub admin_email: Option<String>,
    pub admin_patterns: Vec<flotilla_domain::Pattern>,
    pub dedup_window: Duration,
    pub digest_window: Duration,
    pub retry_base: Duration,
    pub max_attempts: u32,
    pub disable_after: u32,
    pub timeout: Duration,
    pub keep: Duration,
    /// None: no mail (mail subscriptions are refused).
    pub smtp: Option<SmtpConfig>,
}

/// The mail relay as configured; the password is read at start.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: Option<u16>,
    pub tls: flotilla_notify::Tls,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub from: String,
}

impl SmtpConfig {
    /// What the mailer needs, the password read from
    /// `FLOTILLA_SMTP_PASSWORD` or `password_file`.
    pub fn settings(&self, timeout: Duration) -> Result<flotilla_notify::SmtpSettings, String> {
        let password = match std::env::var("FLOTILLA_SMTP_PASSWORD") {
            Ok(p) if !p.is_empty() => Some(p),
            _ => match &self.password_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| format!("notify.smtp.password_file {}: {e}", path.display()))?
                        .trim_end_matches(['\r', '\n'])
                        .to_owned(),
                ),
                None => None,
            },
        };
        let credentials = match (&self.username, password) {
            (Some(user), Some(password)) => Some((user.clone(), password)),
            (Some(_), None) => {
                return Err("notify.smtp.username is set but no password is: set \
                     FLOTILLA_SMTP_PASSWORD or notify.smtp.password_file"
                    .to_owned())
            }
            (None, _) => None,
        };
        Ok(flotilla_notify::SmtpSettings {
            host: self.host.clone(),
            port: self.port,
            tls: self.tls,
            credentials,
            from: self.from.clone(),
            timeout,
        })
    }
}

/// `[dropbox]`: clusters from files dropped in accounts' folders (off
/// unless `dir` is set).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DropboxSection {
    /// The folders: `DIR/USERNAME/`.
    dir: Option<PathBuf>,
    /// Folders in S3 as well, or instead: `s3://BUCKET/PREFIX/USERNAME/`.
    s3: Option<String>,
    /// The bucket's region; unset: the AWS chain's.
    s3_region: Option<String>,
    /// Another endpoint than AWS's (MinIO, moto).
    s3_endpoint_url: Option<String>,
    /// How often every folder is read.
    #[serde(with = "humantime_serde")]
    scan_interval: Duration,
    /// Whether to watch the folders (inotify) and act at once.
    watch: bool,
    /// What a `.cf-create` is merged over, by name (`default` when it
    /// names none).
    templates: BTreeMap<String, flotilla_domain::DropboxTemplate>,
}

impl Default for DropboxSection {
    fn default() -> Self {
        Self {
            dir: None,
            s3: None,
            s3_region: None,
            s3_endpoint_url: None,
            scan_interval: Duration::from_secs(2),
            watch: true,
            templates: BTreeMap::new(),
        }
    }
}

fn notify_config(
    n: &NotifySection,
    from_file: &dyn Fn(PathBuf) -> PathBuf,
    invalid: &dyn Fn(String) -> ConfigError,
) -> Result<NotifyConfig, ConfigError> {
    let admin_patterns = flotilla_domain::Pattern::parse_list(&n.admin_events)
        .map_err(|e| invalid(format!("notify.admin_events: {e}")))?;
    let admin_email = n
        .admin_email
        .as_deref()
        .map(|a| {
            flotilla_domain::Channel::email(a)
                .map(|c| c.target().to_owned())
                .map_err(|e| invalid(format!("notify.admin_email: {e}")))
        })
        .transpose()?;
    if admin_email.is_some() && n.smtp.is_none() {
        return Err(invalid(
            "notify.admin_email: mail needs a relay: add [notify.smtp] with its host and from"
                .into(),
        ));
    }
    if !(1..=50).contains(&n.max_attempts) {
        return Err(invalid("notify.max_attempts: from 1 to 50".into()));
    }
    if !(1..=1000).contains(&n.disable_after) {
        return Err(invalid("notify.disable_after: from 1 to 1000".into()));
    }
    let day = Duration::from_secs(86_400);
    for (key, value, min, max) in [
        ("dedup_window", n.dedup_window, Duration::ZERO, day),
        ("digest_window", n.digest_window, Duration::ZERO, day),
        ("retry_base", n.retry_base, Duration::from_millis(100), day),
        (
            "timeout",
            n.timeout,
            Duration::from_secs(1),
            Duration::from_secs(300),
        ),
        ("keep", n.keep, Duration::from_secs(3600), 400 * day),
    ] {
        if value < min || value > max {
            return Err(invalid(format!(
                "notify.{key}: from {} to {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            )));
        }
    }
    if n.keep < n.dedup_window {
        return Err(invalid(
            "notify.keep: at least dedup_window (what was sent lately is read back from the kept deliveries)"
                .into(),
        ));
    }
    let smtp = n
        .smtp
        .as_ref()
        .map(|s| {
            let tls = flotilla_notify::Tls::parse(&s.tls).ok_or_else(|| {
                invalid(format!(
                    "notify.smtp.tls: {:?} is not starttls, tls or none",
                    s.tls
                ))
            })?;
            if s.host.trim().is_empty() {
                return Err(invalid("notify.smtp.host: name the relay".into()));
            }
            let from = s.from.trim();
            let address = from
                .rsplit_once('<')
                .map_or(from, |(_, a)| a.trim_end_matches('>'));
            flotilla_domain::Channel::email(address)
                .map_err(|e| invalid(format!("notify.smtp.from: {e}")))?;
            Ok(SmtpConfig {
                host: s.host.trim().to_owned(),
                port: s.port,
                tls,
                username: s.username.clone(),
                password_file: s.password_file.clone().map(from_file),
                from: from.to_owned(),
            })
        })
        .transpose()?;
    Ok(NotifyConfig {
        admin_email,
        admin_patterns,
        dedup_window: n.dedup_window,
        digest_window: n.digest_window,
        retry_base: n.retry_base,
        max_attempts: n.max_attempts,
        disable_after: n.disable_after,
        timeout: n.timeout,
        keep: n.keep,
        smtp,
    })
}

/// The drop box as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct DropboxConfig {
    /// The local folders, if any.
    pub dir: Option<PathBuf>,
    /// The folders in S3, if any.
    pub s3: Option<flotilla_artifacts_s3::S3Settings>,
    pub scan_interval: Duration,
    /// Watch the folders (inotify) to act at once; the scans go on.
    pub watch: bool,
    pub templates: BTreeMap<String, flotilla_domain::DropboxTemplate>,
}

/// `[jobs]`: how jobs run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct JobsSection {
    /// A job's `max_runtime` when it names none.
    #[serde(with = "humantime_serde")]
    max_runtime: Duration,
    /// The longest `max_runtime` a job may ask for.
    #[serde(with = "humantime_serde")]
    max_max_runtime: Duration,
    /// Retries of an attempt failed by the infrastructure, when a job
    /// says nothing.
    retries: u32,
    /// The longest a job's `keep_on_failure` may keep a failed attempt's
    /// instance.
    #[serde(with = "humantime_serde")]
    max_keep_on_failure: Duration,
    /// An attempt whose agent is silent this long is lost (and retried).
    #[serde(with = "humantime_serde")]
    heartbeat_timeout: Duration,
    /// An attempt whose script has not started this long after its
    /// instance was asked for never booted (and is retried).
    #[serde(with = "humantime_serde")]
    boot_timeout: Duration,
    /// Instances of job attempts at once, over every pool.
    max_instances: usize,
    /// A job that asked for spot and has waited this long is bought on
    /// demand.
    #[serde(with = "humantime_serde")]
    spot_wait: Duration,
    /// An instance a pool keeps warm for jobs (`idle_nodes`) that no job
    /// took for this long is replaced; it ends itself a little after,
    /// whatever becomes of flotilla.
    #[serde(with = "humantime_serde")]
    warm_max_idle: Duration,
    /// Where agents reach this server; unset: `http://` and the listen
    /// address (loopback for an unspecified one), which only instances on
    /// this machine (the local driver's) can reach.
    server_url: Option<String>,
    /// Where jobs' logs are kept; unset: `artifacts` in the data directory.
    artifacts_dir: Option<PathBuf>,
    /// Jobs' logs in S3 instead (`[jobs.s3]`): what several servers on
    /// several machines share.
    s3: Option<flotilla_artifacts_s3::S3Settings>,
    /// Job templates (`flotilla test`, `flotilla release`): a job's fields
    /// with placeholders.
    templates: BTreeMap<String, toml::Table>,
}

impl Default for JobsSection {
    fn default() -> Self {
        let d = flotilla_engine::JobSettings::default();
        Self {
            max_runtime: d.defaults.max_runtime.unwrap_or(Duration::from_secs(3600)),
            max_max_runtime: d.defaults.max_max_runtime,
            retries: d.defaults.retries,
            max_keep_on_failure: d.defaults.max_keep_on_failure,
            heartbeat_timeout: d.heartbeat_timeout,
            boot_timeout: d.boot_timeout,
            max_instances: d.max_instances,
            spot_wait: d.spot_wait,
            warm_max_idle: d.warm_max_idle,
            server_url: None,
            artifacts_dir: None,
            s3: None,
            templates: BTreeMap::new(),
        }
    }
}

/// Where job agents reach the server, and where jobs' logs are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct JobsConfig {
    pub server_url: Option<String>,
    /// None: `artifacts` in the data directory.
    pub artifacts_dir: Option<PathBuf>,
    /// Jobs' logs in S3 instead of a directory.
    pub s3: Option<flotilla_artifacts_s3::S3Settings>,
}

impl JobsConfig {
    /// Where jobs' logs are kept, as people read it.
    pub fn logs_at(&self, data_dir: &Path) -> String {
        match &self.s3 {
            Some(s3) => s3.url.clone(),
            None => self
                .artifacts_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("artifacts"))
                .display()
                .to_string(),
        }
    }
}

/// `[http]`: the listener's limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct HttpSection {
    /// How long a connection may take to send a request's headers, counted
    /// from when it opens or its last response went out (so also how long
    /// an idle keep-alive connection stays open).
    #[serde(with = "humantime_serde")]
    header_read_timeout: Duration,
    /// Most connections open at once; unset: half the open-file limit.
    max_connections: Option<usize>,
    /// How long shutdown waits for open connections to finish.
    #[serde(with = "humantime_serde")]
    shutdown_drain: Duration,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: None,
            shutdown_drain: Duration::from_secs(10),
        }
    }
}

/// `[http]` as read: `max_connections` is settled at start, from the
/// open-file limit, unless configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpConfig {
    pub header_read_timeout: Duration,
    pub max_connections: Option<usize>,
    pub shutdown_drain: Duration,
}

/// `[events]`: the change feed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct EventsSection {
    /// How long changes are kept (and readable through `/api/v1/events`).
    #[serde(with = "humantime_serde")]
    retention: Duration,
}

impl Default for EventsSection {
    fn default() -> Self {
        Self {
            retention: DEFAULT_EVENT_RETENTION,
        }
    }
}

/// How long the change feed is kept unless `[events] retention` says.
pub const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// `[orgs]`: what new organisations start with, and how often they are
/// charged.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct OrgsSection {
    /// The most nodes a new organisation's cluster may have (admins raise
    /// it per organisation).
    node_limit: u32,
    /// Dollars: at or below this balance an organisation's cluster is shut
    /// down.
    shutdown_threshold: Dollars,
    /// A request must be able to pay for this long (capped by its TTL).
    #[serde(with = "humantime_serde")]
    min_runway: Duration,
    /// How often nodes are charged and budgets re-evaluated.
    #[serde(with = "humantime_serde")]
    accrual_interval: Duration,
}

impl Default for OrgsSection {
    fn default() -> Self {
        let d = flotilla_domain::OrgDefaults::default();
        Self {
            node_limit: d.node_limit,
            shutdown_threshold: Dollars::Text(d.shutdown_threshold.to_string()),
            min_runway: d.min_runway,
            accrual_interval: EngineConfig::default().accrual_interval,
        }
    }
}

/// An amount of dollars as written in the config: a string (`"0.10"`,
/// exact) or a number (`0.10`, read through its shortest decimal form).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Dollars {
    Text(String),
    Number(f64),
}

impl Dollars {
    fn parse(&self, key: &str) -> Result<flotilla_domain::Money, String> {
        let text = match self {
            Dollars::Text(t) => t.clone(),
            Dollars::Number(n) => n.to_string(),
        };
        let money: flotilla_domain::Money = text.parse().map_err(|e| format!("{key}: {e}"))?;
        if money.is_negative() {
            return Err(format!("{key}: must not be negative, got {money}"));
        }
        Ok(money)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AuthSection {
    issuer: String,
    #[serde(with = "humantime_serde")]
    access_token_ttl: Duration,
    #[serde(with = "humantime_serde")]
    refresh_token_ttl: Duration,
    #[serde(with = "humantime_serde")]
    cluster_token_ttl: Duration,
    /// Failed logins allowed per account, and per client network, in
    /// `login_failure_window`.
    login_failures: u32,
    #[serde(with = "humantime_serde")]
    login_failure_window: Duration,
    /// Password hashes computed at once (19 MiB each, kept for reuse).
    max_concurrent_hashes: usize,
}

impl Default for AuthSection {
    fn default() -> Self {
        let a = AccessConfig::default();
        Self {
            issuer: a.issuer,
            access_token_ttl: a.access_token_ttl,
            refresh_token_ttl: a.refresh_token_ttl,
            cluster_token_ttl: a.cluster_token_ttl,
            login_failures: a.login_failures,
            login_failure_window: a.login_failure_window,
            max_concurrent_hashes: a.max_concurrent_hashes,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GithubSection {
    org: String,
    #[serde(default = "default_github_api")]
    api_url: String,
    #[serde(default = "default_github_timeout", with = "humantime_serde")]
    timeout: Duration,
}

fn default_github_api() -> String {
    "https://api.github.com".into()
}

fn default_github_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LevelsSection {
    anonymous: Option<RateOnly>,
    github_member: Option<DeployingLevel>,
    org_member: Option<DeployingLevel>,
    admin: Option<RateOnly>,
}

/// Anonymous callers may not deploy and admins have no deploy limits, so
/// only their request rate is set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateOnly {
    requests_per_minute: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployingLevel {
    max_nodes: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    max_ttl: Option<Duration>,
    /// The longest a job's `keep_on_failure` may be at this level (at
    /// most `[jobs] max_keep_on_failure`, which applies when unset).
    #[serde(default, with = "humantime_serde")]
    max_keep_on_failure: Option<Duration>,
    requests_per_minute: Option<u32>,
}

/// Who may sign in and how, token lifetimes, and request rates per level.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessConfig {
    /// The `iss` of every token this server signs.
    pub issuer: String,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub cluster_token_ttl: Duration,
    pub login_failures: u32,
    pub login_failure_window: Duration,
    /// Password hashes computed at once.
    pub max_concurrent_hashes: usize,
    /// GitHub sign-in; `None` refuses it.
    pub github: Option<GithubAccess>,
    /// Requests per minute for each level, indexed like `Level::ALL`.
    pub requests_per_minute: [u32; 4],
}

#[derive(Debug, Clone, PartialEq)]
pub struct GithubAccess {
    pub org: String,
    pub api_url: String,
    pub timeout: Duration,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            issuer: "flotilla".into(),
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            cluster_token_ttl: Duration::from_secs(3600),
            login_failures: 10,
            login_failure_window: Duration::from_secs(15 * 60),
            max_concurrent_hashes: 2,
            github: None,
            // anonymous, github_member, org_member, admin
            requests_per_minute: [60, 300, 600, 6000],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LimitsSection {
    #[serde(with = "humantime_serde")]
    min_ttl: Duration,
    #[serde(with = "humantime_serde")]
    max_ttl: Duration,
    #[serde(with = "humantime_serde")]
    max_wait: Duration,
    #[serde(with = "humantime_serde")]
    resync_interval: Duration,
    max_nodes: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let limits = Limits::default();
        let engine = EngineConfig::default();
        Self {
            min_ttl: limits.min_ttl,
            max_ttl: limits.max_ttl,
            max_wait: engine.max_wait,
            resync_interval: engine.resync_interval,
            max_nodes: limits.max_nodes,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct EngineSection {
    #[serde(with = "humantime_serde")]
    boot_timeout: Duration,
    #[serde(with = "humantime_serde")]
    probe_timeout: Duration,
    #[serde(with = "humantime_serde")]
    probe_interval: Duration,
    #[serde(with = "humantime_serde")]
    destroy_retry: Duration,
    #[serde(with = "humantime_serde")]
    capacity_backoff: Duration,
    concurrency: usize,
}

impl Default for EngineSection {
    fn default() -> Self {
        let t = Timeouts::default();
        let e = EngineConfig::default();
        Self {
            boot_timeout: t.boot,
            probe_timeout: t.probe,
            probe_interval: e.probe_interval,
            destroy_retry: t.destroy_retry,
            capacity_backoff: e.capacity_backoff,
            concurrency: e.concurrency,
        }
    }
}

/// One driver (instance set). `type` picks the cloud.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DriverConfig {
    Local {
        /// Where node state lives; default `DATA_DIR/drivers/NAME`.
        dir: Option<PathBuf>,
        /// SIGTERM to SIGKILL.
        #[serde(default = "default_grace", with = "humantime_serde")]
        grace: Duration,
        #[serde(default = "default_max_batch")]
        max_batch: u32,
        /// Budget of driver operations per second (none: unlimited).
        ops_per_second: Option<f64>,
    },
    Fake {
        #[serde(default)]
        faults: FakeConfig,
        ops_per_second: Option<f64>,
    },
    /// AWS EC2: the driver's own settings ([`Ec2Config`]) beside flotilla's
    /// throttle budget, in one flat table.
    Ec2(Ec2Driver),
}

/// `[drivers.NAME] type = "ec2"`: `ops_per_second` is flotilla's, every
/// other key belongs to the driver's [`Ec2Config`], which refuses keys it
/// does not know. (serde's `flatten` would lose that refusal, so the table
/// is split by hand.)
#[derive(Debug, Clone, PartialEq)]
pub struct Ec2Driver {
    /// Budget of driver operations per second (none: unlimited).
    pub ops_per_second: Option<f64>,
    pub settings: Ec2Config,
}

impl<'de> Deserialize<'de> for Ec2Driver {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(deserializer)?;
        let ops_per_second = match table.remove("ops_per_second") {
            None => None,
            Some(toml::Value::Float(r)) => Some(r),
            Some(toml::Value::Integer(r)) => Some(r as f64),
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "ops_per_second: expected a number, found {}",
                    other.type_str()
                )))
            }
        };
        let settings = Ec2Config::deserialize(toml::Value::Table(table)).map_err(|e| {
            let mut message = e.to_string().trim_end().to_owned();
            if message.starts_with("unknown field") {
                message.push_str(", `ops_per_second`");
            }
            D::Error::custom(message)
        })?;
        Ok(Ec2Driver {
            ops_per_second,
            settings,
        })
    }
}

fn default_grace() -> Duration {
    Duration::from_secs(5)
}

fn default_max_batch() -> u32 {
    50
}

impl DriverConfig {
    /// The `type` as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            DriverConfig::Local { .. } => "local",
            DriverConfig::Fake { .. } => "fake",
            DriverConfig::Ec2(_) => "ec2",
        }
    }

    pub fn ops_per_second(&self) -> Option<f64> {
        match self {
            DriverConfig::Local { ops_per_second, .. }
            | DriverConfig::Fake { ops_per_second, .. }
            | DriverConfig::Ec2(Ec2Driver { ops_per_second, .. }) => *ops_per_second,
        }
    }
}

/// What a configured driver says of the pools on it: the section it
/// reads (`[pools.NAME.ec2]` on ec2) and its own checks.
#[derive(Debug)]
struct DriverRules(DriverConfig);

impl PoolDriver for DriverRules {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }

    fn section(&self) -> Option<(&'static str, serde_json::Value)> {
        match &self.0 {
            DriverConfig::Ec2(_) => Some(("ec2", Ec2PoolOptions::schema())),
            DriverConfig::Local { .. } | DriverConfig::Fake { .. } => None,
        }
    }

    fn check(&self, name: &PoolName, spec: &PoolSpec) -> Vec<flotilla_domain::Problem> {
        match &self.0 {
            DriverConfig::Ec2(ec2) => ec2.settings.check_pool(name, spec),
            DriverConfig::Local { .. } | DriverConfig::Fake { .. } => Vec::new(),
        }
    }

    fn shared_kinds(&self) -> Vec<(&'static str, serde_json::Value)> {
        let images = match &self.0 {
            DriverConfig::Ec2(_) => flotilla_domain::schema_of::<flotilla_driver_ec2::Ec2Images>(),
            DriverConfig::Local { .. } | DriverConfig::Fake { .. } => {
                flotilla_domain::schema_of::<flotilla_domain::SharedImages>()
            }
        };
        vec![("images", flotilla_control::part_schema(images))]
    }
}

/// The catalogue of `drivers`: what a pool on each may say.
pub fn catalog(drivers: &BTreeMap<String, DriverConfig>) -> PoolCatalog {
    PoolCatalog::new(
        drivers
            .iter()
            .map(|(name, d)| {
                (
                    name.clone(),
                    Arc::new(DriverRules(d.clone())) as Arc<dyn PoolDriver>,
                )
            })
            .collect(),
    )
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// PostgreSQL instead of SQLite under `data_dir`.
    pub database_url: Option<DatabaseUrl>,
    /// How long the change feed is kept.
    pub event_retention: Duration,
    pub engine: EngineConfig,
    pub drivers: BTreeMap<String, DriverConfig>,
    pub pools: BTreeMap<PoolName, PoolSpec>,
    pub default_pool: PoolName,
    /// What a pool on each driver may say, for pools written through the
    /// API.
    pub catalog: Arc<PoolCatalog>,
    pub access: AccessConfig,
    pub http: HttpConfig,
    pub jobs: JobsConfig,
    /// None: no drop box.
    pub dropbox: Option<DropboxConfig>,
    pub notify: NotifyConfig,
}

impl Config {
    /// What a server started with this config would run, a line each, for
    /// `serve --check`.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = vec![format!("listen: {}", self.listen)];
        let dir = &self.data_dir;
        let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
        lines.push(format!(
            "data directory: {} ({})",
            absolute.display(),
            if dir.is_dir() {
                "exists"
            } else {
                "created at start"
            }
        ));
        lines.push(match &self.database_url {
            None => format!(
                "state: SQLite in {}",
                absolute.join("flotilla.db").display()
            ),
            Some(url) => format!("state: PostgreSQL at {url:?}"),
        });
        for (name, driver) in &self.drivers {
            let mut line = format!("driver {name}: {}", driver.kind());
            if let DriverConfig::Local { dir: Some(d), .. } = driver {
                line.push_str(&format!(", nodes in {}", d.display()));
            }
            lines.push(line);
        }
        for (name, pool) in &self.pools {
            let types = match pool.preference().as_slice() {
                [one] => format!(
                    "instance type {}, ${}/h",
                    one.instance_type, one.price_per_hour
                ),
                several => format!(
                    "instance types {}",
                    several
                        .iter()
                        .map(|t| format!("{} (${}/h)", t.instance_type, t.price_per_hour))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            lines.push(format!(
                "pool {name}: driver {}, {types}{}",
                pool.driver,
                if *name == self.default_pool {
                    " (default)"
                } else {
                    ""
                }
            ));
        }
        let l = &self.engine.limits;
        lines.push(format!(
            "limits: time to live {} to {}, at most {} nodes a cluster",
            humantime::format_duration(l.min_ttl),
            humantime::format_duration(l.max_ttl),
            l.max_nodes
        ));
        let j = &self.engine.jobs;
        lines.push(format!(
            "jobs: max_runtime {} by default (at most {}), {} instances at once, templates: {}; logs in {}",
            humantime::format_duration(j.defaults.max_runtime.unwrap_or_default()),
            humantime::format_duration(j.defaults.max_max_runtime),
            j.max_instances,
            if j.templates.is_empty() {
                "none".to_owned()
            } else {
                j.templates.keys().cloned().collect::<Vec<_>>().join(", ")
            },
            self.jobs.logs_at(&self.data_dir)
        ));
        let ec2 = self.drivers.values().any(|d| d.kind() == "ec2");
        lines.push(match (&self.jobs.server_url, ec2) {
            (Some(url), _) => format!("jobs: agents reach this server at {url}"),
            (None, false) => {
                "jobs: agents reach this server at its listen address (this machine's nodes only)"
                    .to_owned()
            }
            (None, true) => "jobs: agents reach this server at its listen address, which EC2 instances cannot reach: set [jobs] server_url to run jobs on ec2 pools".to_owned(),
        });
        let n = &self.notify;
        lines.push(format!(
            "notifications: webhooks; mail {}; admin mail {}; retried {} times from {}, \
             disabled after {} failures in a row",
            match &n.smtp {
                None => "off ([notify.smtp] unset)".to_owned(),
                Some(s) => format!(
                    "through {}{} ({}) from {}",
                    s.host,
                    s.port.map(|p| format!(":{p}")).unwrap_or_default(),
                    match s.tls {
                        flotilla_notify::Tls::Tls => "TLS",
                        flotilla_notify::Tls::StartTls => "STARTTLS",
                        flotilla_notify::Tls::None => "no TLS",
                    },
                    s.from
                ),
            },
            match &n.admin_email {
                None => "none".to_owned(),
                Some(a) => format!(
                    "to {a} of {}",
                    flotilla_domain::patterns_text(&n.admin_patterns)
                ),
            },
            n.max_attempts,
            humantime::format_duration(n.retry_base),
            n.disable_after
        ));
        if let Some(s3) = self.dropbox.as_ref().and_then(|d| d.s3.as_ref()) {
            lines.push(format!(
                "drop box: {}USERNAME/ read every {}{}",
                s3.url,
                humantime::format_duration(
                    self.dropbox
                        .as_ref()
                        .map_or(Duration::ZERO, |d| d.scan_interval)
                ),
                s3.endpoint_url
                    .as_ref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default()
            ));
        }
        lines.push(
            match self
                .dropbox
                .as_ref()
                .and_then(|d| d.dir.as_ref().map(|dir| (d, dir)))
            {
                None if self.dropbox.is_some() => {
                    "drop box: no local folders ([dropbox] dir unset)".to_owned()
                }
                None => "drop box: off ([dropbox] dir and s3 unset)".to_owned(),
                Some((d, dir)) => {
                    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
                    format!(
                        "drop box: {}/USERNAME/ read every {}{} ({}), templates: {}",
                        absolute.display(),
                        humantime::format_duration(d.scan_interval),
                        if d.watch { " and watched" } else { "" },
                        if dir.is_dir() {
                            "exists"
                        } else {
                            "created at start"
                        },
                        if d.templates.is_empty() {
                            "none (1 node for 1h)".to_owned()
                        } else {
                            d.templates.keys().cloned().collect::<Vec<_>>().join(", ")
                        }
                    )
                }
            },
        );
        lines
    }
}

/// A PostgreSQL URL. Its `Debug` hides the password, so the config can be
/// logged.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: String) -> Result<DatabaseUrl, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DatabaseUrl(url))
        } else {
            Err(format!(
                "{:?} is not a PostgreSQL URL (postgres://user:password@host/database); \
                 leave database_url out to keep state in SQLite under data_dir",
                flotilla_store_postgres::redact(&url)
            ))
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&flotilla_store_postgres::redact(&self.0))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Reads `path`, or the embedded defaults when there is none. Relative
    /// paths in the file (`data_dir`, a local driver's `dir`) are relative
    /// to the file, so a config means the same wherever the server starts.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Self::parse("", "(embedded defaults)"),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                let base = p.parent().filter(|d| !d.as_os_str().is_empty());
                Self::parse_at(&text, &p.display().to_string(), base)
            }
        }
    }

    /// Parses `text`; relative paths stay relative to where the server
    /// runs.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Self::parse_at(text, origin, None)
    }

    fn parse_at(text: &str, origin: &str, base: Option<&Path>) -> Result<Config, ConfigError> {
        let from_file = |p: PathBuf| match base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p,
        };
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        };
        let file: File =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_owned()))?;

        let l = &file.limits;
        if l.min_ttl > l.max_ttl {
            return Err(invalid(format!(
                "limits.min_ttl ({}) is above limits.max_ttl ({})",
                humantime::format_duration(l.min_ttl),
                humantime::format_duration(l.max_ttl)
            )));
        }
        if l.max_nodes == 0 {
            return Err(invalid("limits.max_nodes must be at least 1".into()));
        }
        if l.resync_interval.is_zero() {
            return Err(invalid("limits.resync_interval must be above zero".into()));
        }
        let e = &file.engine;
        if e.concurrency == 0 {
            return Err(invalid("engine.concurrency must be at least 1".into()));
        }
        if e.probe_interval.is_zero() {
            return Err(invalid("engine.probe_interval must be above zero".into()));
        }

        let access =
            access_config(&file.auth, file.github.as_ref(), &file.levels).map_err(invalid)?;
        let levels = level_policy(&file.levels).map_err(invalid)?;

        let mut drivers = file.drivers;
        for driver in drivers.values_mut() {
            if let DriverConfig::Local { dir: Some(dir), .. } = driver {
                *dir = from_file(std::mem::take(dir));
            }
        }
        if drivers.is_empty() {
            drivers.insert(
                "local".into(),
                DriverConfig::Local {
                    dir: None,
                    grace: default_grace(),
                    max_batch: default_max_batch(),
                    ops_per_second: None,
                },
            );
        }
        for (name, driver) in &drivers {
            if flotilla_domain::PoolName::new(name.as_str()).is_err() {
                return Err(invalid(format!(
                    "drivers.{name}: driver names use letters, digits, '-' and '_'"
                )));
            }
            if let Some(r) = driver.ops_per_second() {
                if !(r > 0.0 && r.is_finite()) {
                    return Err(invalid(format!(
                        "drivers.{name}.ops_per_second must be above zero"
                    )));
                }
            }
            if let DriverConfig::Local { max_batch: 0, .. } = driver {
                return Err(invalid(format!(
                    "drivers.{name}.max_batch must be at least 1"
                )));
            }
            if let DriverConfig::Ec2(ec2) = driver {
                ec2.settings
                    .validate()
                    .map_err(|e| invalid(format!("drivers.{name}: {e}")))?;
            }
        }

        let catalog = Arc::new(catalog(&drivers));
        let mut pool_sections = file.pools;
        if pool_sections.is_empty() {
            let driver = drivers.keys().next().expect("at least one driver").clone();
            let mut table = toml::Table::new();
            table.insert("driver".into(), driver.into());
            table.insert("instance_type".into(), "local.small".into());
            pool_sections.insert("default".into(), table);
        }
        let mut pools = BTreeMap::new();
        for (name, table) in pool_sections {
            let pool_name =
                PoolName::new(name.as_str()).map_err(|e| invalid(format!("pools.{name}: {e}")))?;
            let document =
                serde_json::to_value(&table).map_err(|e| invalid(format!("pools.{name}: {e}")))?;
            let (_, spec) = catalog
                .check(&pool_name, &document, PoolSource::Config)
                .map_err(|problems| {
                    invalid(
                        problems
                            .iter()
                            .map(|p| {
                                format!("{}: {}", p.dotted(&format!("pools.{name}")), p.message)
                            })
                            .collect::<Vec<_>>()
                            .join("; "),
                    )
                })?;
            // The driver starts with its pools' sections (the engine hands
            // it those of pools written through the API as they come).
            if let (Some(DriverConfig::Ec2(ec2)), Some(section)) =
                (drivers.get_mut(&spec.driver), &spec.options)
            {
                let options = Ec2PoolOptions::from_value(section)
                    .map_err(|e| invalid(format!("pools.{name}.ec2: {e}")))?;
                ec2.settings.pools.insert(pool_name.clone(), options);
            }
            pools.insert(pool_name, spec);
        }
        let default_pool = match file.default_pool {
            Some(name) => PoolName::new(name.as_str())
                .ok()
                .filter(|p| pools.contains_key(p))
                .ok_or_else(|| invalid(format!("default_pool: no pool named {name:?}")))?,
            None => {
                let default = PoolName::new("default").expect("valid");
                if pools.contains_key(&default) {
                    default
                } else if pools.len() == 1 {
                    pools.keys().next().expect("one pool").clone()
                } else {
                    return Err(invalid(
                        "default_pool: several pools and none named \"default\"; set default_pool"
                            .into(),
                    ));
                }
            }
        };

        let database_url = file
            .database_url
            .map(|u| DatabaseUrl::new(u).map_err(|e| invalid(format!("database_url: {e}"))))
            .transpose()?;

        if file.events.retention < Duration::from_secs(60) {
            return Err(invalid(
                "events.retention: keep changes for at least 1m, or readers cannot keep up".into(),
            ));
        }

        let h = &file.http;
        if h.header_read_timeout < Duration::from_secs(1) {
            return Err(invalid(format!(
                "http.header_read_timeout: at least 1s, got {}",
                humantime::format_duration(h.header_read_timeout)
            )));
        }
        if h.max_connections == Some(0) {
            return Err(invalid(
                "http.max_connections: at least 1; leave it out for half the open-file limit"
                    .into(),
            ));
        }
        let http = HttpConfig {
            header_read_timeout: h.header_read_timeout,
            max_connections: h.max_connections,
            shutdown_drain: h.shutdown_drain,
        };

        let j = &file.jobs;
        if j.max_runtime.is_zero() || j.max_runtime > j.max_max_runtime {
            return Err(invalid(format!(
                "jobs.max_runtime: between 1s and jobs.max_max_runtime ({}), got {}",
                humantime::format_duration(j.max_max_runtime),
                humantime::format_duration(j.max_runtime)
            )));
        }
        if j.retries > flotilla_domain::MAX_RETRIES {
            return Err(invalid(format!(
                "jobs.retries: at most {}, got {}",
                flotilla_domain::MAX_RETRIES,
                j.retries
            )));
        }
        if j.heartbeat_timeout < Duration::from_secs(15) {
            return Err(invalid(
                "jobs.heartbeat_timeout: at least 15s (agents report every 5s; one lost report must not end an attempt)".into(),
            ));
        }
        if j.warm_max_idle < Duration::from_secs(60) {
            return Err(invalid(
                "jobs.warm_max_idle: at least 1m (an instance kept warm must have time to boot and be taken)".into(),
            ));
        }
        if let Some(url) = &j.server_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(format!(
                    "jobs.server_url: {url:?} is not an http:// or https:// URL"
                )));
            }
        }
        if let Some(s3) = &j.s3 {
            if j.artifacts_dir.is_some() {
                return Err(invalid(
                    "jobs: set artifacts_dir or [jobs.s3], not both (logs are kept in one place)"
                        .into(),
                ));
            }
            flotilla_artifacts_s3::parse_url(&s3.url)
                .map_err(|e| invalid(format!("jobs.s3.url: {e}")))?;
        }
        let job_defaults = flotilla_domain::JobDefaults {
            max_runtime: Some(j.max_runtime),
            max_max_runtime: j.max_max_runtime,
            retries: j.retries,
            max_keep_on_failure: j.max_keep_on_failure,
        };
        let mut templates = BTreeMap::new();
        for (name, table) in &j.templates {
            let good_name = name.len() <= 32
                && name.starts_with(|c: char| c.is_ascii_lowercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !good_name {
                return Err(invalid(format!(
                    "jobs.templates.{name}: a template's name is a lowercase letter, then up to 31 lowercase letters, digits, - or _"
                )));
            }
            let fields = serde_json::to_value(table).map_err(|e| invalid(e.to_string()))?;
            let template = flotilla_domain::JobTemplate::new(name, fields, &job_defaults).map_err(
                |problems| {
                    invalid(format!(
                        "jobs.templates.{name}: {}",
                        problems
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    ))
                },
            )?;
            templates.insert(name.clone(), template);
        }
        let jobs = JobsConfig {
            server_url: j
                .server_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_owned()),
            artifacts_dir: j.artifacts_dir.clone().map(&from_file),
            s3: j.s3.clone(),
        };
        let job_settings = flotilla_engine::JobSettings {
            defaults: job_defaults,
            heartbeat_timeout: j.heartbeat_timeout,
            boot_timeout: j.boot_timeout,
            max_instances: j.max_instances,
            spot_wait: j.spot_wait,
            warm_max_idle: j.warm_max_idle,
            templates,
        };

        let d = &file.dropbox;
        if d.scan_interval < Duration::from_millis(100) {
            return Err(invalid("dropbox.scan_interval: at least 100ms".into()));
        }
        let s3 = match &d.s3 {
            Some(url) => {
                let settings = flotilla_artifacts_s3::S3Settings {
                    url: url.clone(),
                    region: d.s3_region.clone(),
                    endpoint_url: d.s3_endpoint_url.clone(),
                };
                flotilla_artifacts_s3::parse_url(url)
                    .map_err(|e| invalid(format!("dropbox.s3: {e}")))?;
                Some(settings)
            }
            None if d.s3_region.is_some() || d.s3_endpoint_url.is_some() => return Err(invalid(
                "dropbox.s3_region and s3_endpoint_url need dropbox.s3 = \"s3://BUCKET/PREFIX/\""
                    .into(),
            )),
            None => None,
        };
        let dropbox = (d.dir.is_some() || s3.is_some()).then(|| DropboxConfig {
            dir: d.dir.clone().map(&from_file),
            s3,
            scan_interval: d.scan_interval,
            watch: d.watch,
            templates: d.templates.clone(),
        });
        let notify = notify_config(&file.notify, &from_file, &invalid)?;
        Ok(Config {
            http,
            jobs,
            dropbox,
            notify,
            listen: file
                .listen
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid")),
            database_url,
            event_retention: file.events.retention,
            data_dir: file
                .data_dir
                .map(from_file)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            engine: EngineConfig {
                limits: Limits {
                    min_ttl: l.min_ttl,
                    max_ttl: l.max_ttl,
                    max_nodes: l.max_nodes,
                },
                timeouts: Timeouts {
                    boot: e.boot_timeout,
                    probe: e.probe_timeout,
                    destroy_retry: e.destroy_retry,
                },
                resync_interval: l.resync_interval,
                probe_interval: e.probe_interval,
                max_wait: l.max_wait,
                concurrency: e.concurrency,
                capacity_backoff: e.capacity_backoff,
                levels,
                orgs: flotilla_domain::OrgDefaults {
                    node_limit: file.orgs.node_limit,
                    shutdown_threshold: file
                        .orgs
                        .shutdown_threshold
                        .parse("orgs.shutdown_threshold")
                        .map_err(invalid)?,
                    min_runway: file.orgs.min_runway,
                },
                accrual_interval: file.orgs.accrual_interval,
                jobs: job_settings,
                ..EngineConfig::default()
            },
            drivers,
            pools,
            default_pool,
            catalog,
            access,
        })
    }
}

fn access_config(
    auth: &AuthSection,
    github: Option<&GithubSection>,
    levels: &LevelsSection,
) -> Result<AccessConfig, String> {
    if auth.issuer.trim().is_empty() {
        return Err("auth.issuer must not be empty".into());
    }
    for (key, value) in [
        ("access_token_ttl", auth.access_token_ttl),
        ("refresh_token_ttl", auth.refresh_token_ttl),
        ("cluster_token_ttl", auth.cluster_token_ttl),
        ("login_failure_window", auth.login_failure_window),
    ] {
        if value < Duration::from_secs(1) {
            return Err(format!("auth.{key} must be at least 1s"));
        }
    }
    if auth.refresh_token_ttl <= auth.access_token_ttl {
        return Err("auth.refresh_token_ttl must be longer than auth.access_token_ttl".into());
    }
    if auth.login_failures == 0 {
        return Err("auth.login_failures must be at least 1".into());
    }
    let github = match github {
        None => None,
        Some(g) => {
            if g.org.trim().is_empty() {
                return Err("github.org must name the GitHub organisation".into());
            }
            if !(g.api_url.starts_with("https://") || g.api_url.starts_with("http://")) {
                return Err(format!(
                    "github.api_url {:?} must be an http(s) URL",
                    g.api_url
                ));
            }
            Some(GithubAccess {
                org: g.org.clone(),
                api_url: g.api_url.trim_end_matches('/').to_owned(),
                timeout: g.timeout,
            })
        }
    };
    let mut requests_per_minute = AccessConfig::default().requests_per_minute;
    let rates = [
        levels
            .anonymous
            .as_ref()
            .and_then(|l| l.requests_per_minute),
        levels
            .github_member
            .as_ref()
            .and_then(|l| l.requests_per_minute),
        levels
            .org_member
            .as_ref()
            .and_then(|l| l.requests_per_minute),
        levels.admin.as_ref().and_then(|l| l.requests_per_minute),
    ];
    for (i, rate) in rates.into_iter().enumerate() {
        if let Some(rate) = rate {
            if rate == 0 {
                return Err(format!(
                    "levels.{}.requests_per_minute must be at least 1",
                    Level::ALL[i]
                ));
            }
            requests_per_minute[i] = rate;
        }
    }
    if auth.max_concurrent_hashes == 0 {
        return Err(
            "auth.max_concurrent_hashes: at least 1 (each takes 19 MiB while it runs)".into(),
        );
    }
    Ok(AccessConfig {
        max_concurrent_hashes: auth.max_concurrent_hashes,
        issuer: auth.issuer.clone(),
        access_token_ttl: auth.access_token_ttl,
        refresh_token_ttl: auth.refresh_token_ttl,
        cluster_token_ttl: auth.cluster_token_ttl,
        login_failures: auth.login_failures,
        login_failure_window: auth.login_failure_window,
        github,
        requests_per_minute,
    })
}

fn level_policy(levels: &LevelsSection) -> Result<LevelPolicy, String> {
    let defaults = LevelPolicy::default();
    let pick = |name: &str, section: Option<&DeployingLevel>, default: LevelLimits| {
        let limits = LevelLimits {
            max_nodes: section
                .and_then(|s| s.max_nodes)
                .unwrap_or(default.max_nodes),
            max_ttl: section.and_then(|s| s.max_ttl).unwrap_or(default.max_ttl),
            max_keep_on_failure: section
                .and_then(|s| s.max_keep_on_failure)
                .or(default.max_keep_on_failure),
        };
        if limits.max_ttl.is_zero() {
            return Err(format!("levels.{name}.max_ttl must be above zero"));
        }
        Ok(limits)
    };
    Ok(LevelPolicy {
        github_member: pick(
            "github_member",
            levels.github_member.as_ref(),
            defaults.github_member,
        )?,
        org_member: pick(
            "org_member",
            levels.org_member.as_ref(),
            defaults.org_member,
        )?,
    })
}

#[cfg(test)]
mod tests {

    /// `docs/schemas/` holds the pool schema of each driver type as this
    /// build generates it (for a driver named after its type), so README
    /// can link them. `FLOTILLA_BLESS=1 cargo nextest run -p flotilla
    /// published_schemas` writes them anew.
    #[test]
    fn the_published_schemas_are_current() {
        use super::{catalog, default_grace, default_max_batch, DriverConfig, Ec2Driver};
        let drivers = std::collections::BTreeMap::from([
            (
                "local".to_owned(),
                DriverConfig::Local {
                    dir: None,
                    grace: default_grace(),
                    max_batch: default_max_batch(),
                    ops_per_second: None,
                },
            ),
            (
                "fake".to_owned(),
                DriverConfig::Fake {
                    faults: Default::default(),
                    ops_per_second: None,
                },
            ),
            (
                "ec2".to_owned(),
                DriverConfig::Ec2(Ec2Driver {
                    ops_per_second: None,
                    settings: flotilla_driver_ec2::Ec2Config::new("us-west-2"),
                }),
            ),
        ]);
        let catalog = catalog(&drivers);
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/schemas");
        for (name, _) in catalog.drivers() {
            let path = dir.join(format!("pool-{name}.json"));
            let generated =
                serde_json::to_string_pretty(catalog.schema(name).unwrap()).unwrap() + "\n";
            if std::env::var_os("FLOTILLA_BLESS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &generated).unwrap();
            }
            let published = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                published == generated,
                "{} is not what this build generates; run FLOTILLA_BLESS=1 cargo nextest run -p flotilla published_schemas",
                path.display()
            );
            for kind in catalog.shared_kinds(name) {
                let path = dir.join(format!("shared-{name}-{kind}.json"));
                let generated =
                    serde_json::to_string_pretty(catalog.shared_schema(name, kind).unwrap())
                        .unwrap()
                        + "\n";
                if std::env::var_os("FLOTILLA_BLESS").is_some() {
                    std::fs::write(&path, &generated).unwrap();
                }
                let published = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(
                    published == generated,
                    "{} is not what this build generates; run FLOTILLA_BLESS=1 cargo nextest run -p flotilla published_schemas",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn the_template_is_the_defaults_spelled_out() {
        let template = Config::parse(TEMPLATE, "config init").unwrap();
        let defaults = Config::parse("", "x").unwrap();
        assert_eq!(format!("{template:#?}"), format!("{defaults:#?}"));
    }

    #[test]
    fn relative_paths_in_a_file_are_relative_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("flotilla.toml");
        std::fs::write(
            &file,
            "data_dir = \"state\"\n[drivers.local]\ntype = \"local\"\ndir = \"nodes\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&file)).unwrap();
        assert_eq!(c.data_dir, dir.path().join("state"));
        let DriverConfig::Local {
            dir: Some(nodes), ..
        } = &c.drivers["local"]
        else {
            panic!("a local driver with a dir");
        };
        assert_eq!(nodes, &dir.path().join("nodes"));
        std::fs::write(&file, "data_dir = \"/srv/flotilla\"\n").unwrap();
        let c = Config::load(Some(&file)).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/flotilla"), "absolute stays");
    }

    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, "test.toml").unwrap_err().to_string()
    }

    #[test]
    fn embedded_defaults() {
        let c = Config::parse("", "x").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(matches!(c.drivers["local"], DriverConfig::Local { .. }));
        assert_eq!(c.default_pool.as_str(), "default");
        assert_eq!(
            c.pools[&c.default_pool].preferred().unwrap().as_str(),
            "local.small"
        );
        assert_eq!(c.engine.resync_interval, Duration::from_secs(10));
        assert_eq!(c.engine.timeouts.boot, Duration::from_secs(600));
    }

    #[test]
    fn listener_and_hashing_limits_are_checked() {
        let c = Config::parse("", "x").unwrap();
        assert_eq!(c.http.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.http.max_connections, None);
        assert_eq!(c.access.max_concurrent_hashes, 2);
        let c = Config::parse(
            "[http]\nheader_read_timeout = \"3s\"\nmax_connections = 64\n[auth]\nmax_concurrent_hashes = 4\n",
            "x",
        )
        .unwrap();
        assert_eq!(c.http.max_connections, Some(64));
        assert_eq!(c.access.max_concurrent_hashes, 4);
        for (text, says) in [
            (
                "[http]\nmax_connections = 0",
                "http.max_connections: at least 1",
            ),
            (
                "[http]\nheader_read_timeout = \"100ms\"",
                "http.header_read_timeout: at least 1s",
            ),
            (
                "[auth]\nmax_concurrent_hashes = 0",
                "auth.max_concurrent_hashes: at least 1",
            ),
            ("[http]\nidle = \"1s\"", "idle"),
            (
                "[jobs]\nwarm_max_idle = \"30s\"",
                "jobs.warm_max_idle: at least 1m",
            ),
        ] {
            let e = err(text);
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    /// The example in product.md, ec2 driver included.
    #[test]
    fn product_example_parses() {
        let text = r#"
listen = "127.0.0.1:8470"
data_dir = "flotilla-data"

[limits]
min_ttl = "1m"          # shortest time-to-live accepted
max_wait = "10m"        # longest a request with wait blocks
resync_interval = "10s" # periodic full reconcile, on top of event-driven work

[drivers.local]
type = "local"

[drivers.aws]
type = "ec2"
region = "us-west-2"
endpoint_url = "http://127.0.0.1:5055"   # optional; for compatible endpoints

[pools.default]
driver = "local"
instance_type = "local.small"

[pools.ec2]
driver = "aws"
instance_type = "t3.micro"
image = "ami-12c6146b"
"#;
        let c = Config::parse(text, "x").unwrap();
        assert_eq!(c.listen.port(), 8470);
        assert_eq!(c.engine.max_wait, Duration::from_secs(600));
        assert_eq!(c.default_pool.as_str(), "default");
        let DriverConfig::Ec2(aws) = &c.drivers["aws"] else {
            panic!("{:?}", c.drivers["aws"]);
        };
        assert_eq!(
            aws.settings,
            Ec2Config {
                endpoint_url: Some("http://127.0.0.1:5055".into()),
                ..Ec2Config::new("us-west-2")
            }
        );
        assert_eq!(aws.ops_per_second, None);
        let pool = &c.pools[&PoolName::new("ec2").unwrap()];
        assert_eq!(pool.driver, "aws");
        assert_eq!(pool.preferred().unwrap().as_str(), "t3.micro");
        assert_eq!(
            pool.image.as_ref().and_then(|i| i.id()),
            Some("ami-12c6146b")
        );
    }

    /// The README's config example is what an operator copies: it must parse
    /// and mean what its comments say.
    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n").expect("a toml block in README") + "```toml\n".len();
        let text = &readme[start..start + readme[start..].find("```").expect("closed block")];
        let c = Config::parse(text, "README.md").unwrap();
        let defaults = Config::parse("", "x").unwrap();
        assert_eq!(
            c.engine.limits, defaults.engine.limits,
            "README shows the default limits"
        );
        assert_eq!(
            c.engine.timeouts, defaults.engine.timeouts,
            "README shows the default timeouts"
        );
        assert_eq!(c.engine.concurrency, defaults.engine.concurrency);
        assert_eq!(
            c.access, defaults.access,
            "README shows the default [auth] and rates"
        );
        assert_eq!(
            c.engine.levels, defaults.engine.levels,
            "README shows the default level limits"
        );
        assert!(matches!(c.drivers["sim"], DriverConfig::Fake { .. }));
        assert_eq!(
            c.engine.orgs, defaults.engine.orgs,
            "README shows the [orgs] defaults"
        );
        assert_eq!(c.engine.accrual_interval, defaults.engine.accrual_interval);
        assert_eq!(
            c.pools[&c.default_pool]
                .tags
                .get("team")
                .map(String::as_str),
            Some("data")
        );
    }

    /// README's IAM policy is JSON, allows every call the ec2 driver makes,
    /// and scopes every write by the ownership tag.
    #[test]
    fn readme_iam_policy_covers_the_ec2_drivers_calls() {
        let readme = include_str!("../../../README.md");
        let section = &readme[readme.find("## Running on AWS").expect("the AWS section")..];
        let start = section.find("```json\n").expect("a json block") + "```json\n".len();
        let text = &section[start..start + section[start..].find("```").expect("closed block")];
        let policy: serde_json::Value = serde_json::from_str(text).expect("the policy is JSON");
        let statements = policy["Statement"].as_array().unwrap();
        let actions = |s: &serde_json::Value| -> Vec<String> {
            match &s["Action"] {
                serde_json::Value::String(a) => vec![a.clone()],
                serde_json::Value::Array(a) => {
                    a.iter().map(|a| a.as_str().unwrap().to_owned()).collect()
                }
                other => panic!("{other}"),
            }
        };
        for call in [
            "ec2:DescribeInstances",
            "ec2:DescribeInstanceTypes",
            "ec2:DescribeSpotPriceHistory",
            "ec2:RunInstances",
            "ec2:CreateTags",
            "ec2:TerminateInstances",
            "iam:PassRole",
        ] {
            assert!(
                statements
                    .iter()
                    .any(|s| actions(s).iter().any(|a| a == call)),
                "{call} is not allowed"
            );
        }
        for s in statements {
            assert_eq!(s["Effect"], "Allow");
            let acts = actions(s);
            let condition = s["Condition"].to_string();
            if acts
                .iter()
                .any(|a| a == "ec2:TerminateInstances" || a == "ec2:CreateTags")
            {
                assert!(
                    condition.contains("flotilla-instance-set"),
                    "unscoped write: {s}"
                );
            }
            let launches_instances = acts.iter().any(|a| a == "ec2:RunInstances")
                && s["Resource"].to_string().contains(":instance/");
            if launches_instances {
                assert!(
                    condition.contains("aws:RequestTag/flotilla-instance-set"),
                    "instances launched without our tag: {s}"
                );
            }
            if s["Resource"] == "*" {
                assert!(
                    acts.iter().all(|a| a.starts_with("ec2:Describe")),
                    "only Describe* on every resource: {s}"
                );
            }
        }
    }

    /// README's "Drop box" example parses and means what it says.
    #[test]
    fn readme_dropbox_example_parses() {
        let readme = include_str!("../../../README.md");
        let section = &readme[readme.find("## Drop box").expect("the drop box section")..];
        let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let text = &section[start..start + section[start..].find("```").expect("closed block")];
        let c = Config::parse(text, "/etc/flotilla/flotilla.toml").unwrap();
        let d = c.dropbox.expect("a drop box");
        assert_eq!(d.dir, Some(PathBuf::from("/srv/flotilla/dropbox")));
        assert_eq!(d.scan_interval, Duration::from_secs(2));
        let t = &d.templates["default"];
        assert_eq!(
            (t.nodes, t.ttl, t.pool.as_deref(), t.public),
            (2, Duration::from_secs(4 * 3600), Some("general"), false)
        );
        assert_eq!(
            Config::parse("", "x").unwrap().dropbox,
            None,
            "off by default"
        );
        let e = err("[dropbox]\ndir = \"d\"\n[dropbox.templates.default]\nnodes = 2\nsize = 3\n");
        assert!(e.contains("size"), "{e}");
        // In S3 as well, or instead.
        let c = Config::parse(
            "[dropbox]\ns3 = \"s3://drops/team\"\ns3_region = \"eu-west-1\"\n",
            "x",
        )
        .unwrap();
        let d = c.dropbox.expect("a drop box in S3");
        assert_eq!(d.dir, None);
        let s3 = d.s3.expect("its S3 folders");
        assert_eq!(
            (s3.url.as_str(), s3.region.as_deref()),
            ("s3://drops/team", Some("eu-west-1"))
        );
        let e = err("[dropbox]\ns3 = \"drops/team\"\n");
        assert!(e.contains("dropbox.s3"), "{e}");
        let e = err("[dropbox]\ndir = \"d\"\ns3_region = \"eu-west-1\"\n");
        assert!(e.contains("need dropbox.s3"), "{e}");
    }

    /// README's "Notifications" example parses and means what it says.
    #[test]
    fn readme_notify_example_parses() {
        let readme = include_str!("../../../README.md");
        let section = &readme[readme.find("## Notifications").expect("the section")..];
        let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let text = &section[start..start + section[start..].find("```").expect("closed block")];
        let c = Config::parse(text, "/etc/flotilla/flotilla.toml").unwrap();
        let n = c.notify;
        assert_eq!(n.admin_email.as_deref(), Some("ops@example.org"));
        assert_eq!(
            flotilla_domain::patterns_text(&n.admin_patterns),
            "cluster.deployed,cluster.destroyed,cluster.expired"
        );
        assert_eq!(n.digest_window, Duration::from_secs(60));
        let smtp = n.smtp.expect("a relay");
        assert_eq!(
            (smtp.host.as_str(), smtp.port, smtp.tls),
            (
                "smtp.example.org",
                Some(587),
                flotilla_notify::Tls::StartTls
            )
        );
        assert_eq!(
            smtp.password_file,
            Some(PathBuf::from("/etc/flotilla/smtp-password"))
        );
        assert!(Config::parse("", "x").unwrap().notify.smtp.is_none());
        for (bad, says) in [
            ("[notify]\nadmin_email = \"ops@x.org\"\n", "[notify.smtp]"),
            ("[notify]\nadmin_email = \"ops\"\n", "not a mail address"),
            (
                "[notify]\nadmin_events = \"cluster.exploded\"\n",
                "names no event",
            ),
            ("[notify]\nmax_attempts = 0\n", "max_attempts"),
            (
                "[notify.smtp]\nhost = \"h\"\ntls = \"ssl\"\nfrom = \"a@b.org\"\n",
                "starttls, tls or none",
            ),
            (
                "[notify.smtp]\nhost = \"h\"\nfrom = \"nobody\"\n",
                "notify.smtp.from",
            ),
        ] {
            let e = err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    /// README's "Running on AWS" example parses, and its defaults are the
    /// driver's.
    #[test]
    fn readme_aws_example_parses() {
        let readme = include_str!("../../../README.md");
        let section = &readme[readme.find("## Running on AWS").expect("the AWS section")..];
        let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let text = &section[start..start + section[start..].find("```").expect("closed block")];
        let c = Config::parse(text, "README.md").unwrap();
        let DriverConfig::Ec2(aws) = &c.drivers["aws"] else {
            panic!("{:?}", c.drivers["aws"]);
        };
        let s = &aws.settings;
        let defaults = Ec2Config::new("us-west-2");
        assert_eq!(s.max_batch, defaults.max_batch, "README shows the default");
        assert_eq!(s.address, defaults.address, "README shows the default");
        assert_eq!(s.subnets.len(), 2);
        assert!(s.spot.as_ref().unwrap().fallback_on_demand);
        assert!(s.health_check.is_some());
        assert_eq!(aws.ops_per_second, Some(10.0));
        let pool = &c.pools[&c.default_pool];
        assert_eq!(pool.driver, "aws");
        assert!(pool.init_data.as_deref().unwrap().starts_with("#!/bin/sh"));
        assert!(pool.init_data.as_deref().unwrap().contains("{{cluster}}"));
        let gpu = s.launch_settings(Some(&PoolName::new("gpu").unwrap()));
        assert_eq!(gpu.spot.unwrap().max_price.as_deref(), Some("0.60"));
        assert!(!gpu.spot.unwrap().fallback_on_demand);
        assert_eq!(gpu.subnets.len(), 1);
        assert_eq!(gpu.health_check, None);
        assert_eq!(gpu.security_groups, s.security_groups, "the driver's");
    }

    #[test]
    fn access_defaults_and_overrides() {
        let c = Config::parse("", "x").unwrap();
        assert_eq!(c.access, AccessConfig::default());
        assert_eq!(c.engine.levels, LevelPolicy::default());
        let c = Config::parse(
            "[auth]\naccess_token_ttl = \"5m\"\n[github]\norg = \"acme\"\napi_url = \"https://ghe.example.com/api/v3/\"\n\
             [levels.org_member]\nmax_nodes = 4\nmax_ttl = \"2h\"\nmax_keep_on_failure = \"10m\"\n[levels.anonymous]\nrequests_per_minute = 5\n",
            "x",
        )
        .unwrap();
        assert_eq!(c.access.access_token_ttl, Duration::from_secs(300));
        let github = c.access.github.unwrap();
        assert_eq!(github.org, "acme");
        assert_eq!(github.api_url, "https://ghe.example.com/api/v3");
        assert_eq!(c.engine.levels.org_member.max_nodes, 4);
        assert_eq!(
            c.engine.levels.org_member.max_ttl,
            Duration::from_secs(7200)
        );
        assert_eq!(
            c.engine.levels.org_member.max_keep_on_failure,
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            c.engine.levels.github_member,
            LevelPolicy::default().github_member
        );
        assert_eq!(c.access.requests_per_minute[0], 5);
    }

    #[test]
    fn bad_access_values_are_refused_with_their_key() {
        for (text, key) in [
            ("[levels.admin]\nmax_nodes = 3\n", "max_nodes"),
            ("[levels.anonymous]\nmax_ttl = \"1h\"\n", "max_ttl"),
            (
                "[levels.org_member]\nrequests_per_minute = 0\n",
                "levels.org_member.requests_per_minute",
            ),
            ("[levels.root]\nmax_nodes = 3\n", "root"),
            (
                "[auth]\nrefresh_token_ttl = \"1m\"\n",
                "auth.refresh_token_ttl",
            ),
            ("[auth]\nlogin_failures = 0\n", "auth.login_failures"),
            ("[github]\napi_url = \"https://x\"\n", "org"),
            (
                "[github]\norg = \"acme\"\napi_url = \"ftp://x\"\n",
                "github.api_url",
            ),
        ] {
            let e = err(text);
            assert!(e.contains("test.toml") && e.contains(key), "{text:?}: {e}");
        }
    }

    #[test]
    fn unknown_keys_name_the_key_and_file() {
        let e = err("[limits]\nmax_wiat = \"1m\"\n");
        assert!(e.contains("test.toml") && e.contains("max_wiat"), "{e}");
        let e = err("[drivers.x]\ntype = \"local\"\nbogus = 1\n");
        assert!(e.contains("bogus"), "{e}");
        let e = err("lisen = \"127.0.0.1:1\"\n");
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        assert!(err("[limits]\nmin_ttl = \"soon\"\n").contains("min_ttl"));
        assert!(err("[limits]\nmin_ttl = \"2h\"\nmax_ttl = \"1h\"\n").contains("limits.min_ttl"));
        assert!(err("[drivers.x]\ntype = \"nimbus\"\n").contains("nimbus"));
        let e = err("[drivers.x]\ntype = \"local\"\n[pools.default]\ndriver = \"y\"\ninstance_type = \"a\"\n");
        assert!(
            e.contains("pools.default.driver") && e.contains("\"y\""),
            "{e}"
        );
        let e = err("[pools.default]\ndriver = \"local\"\ninstance_type = \"a b\"\n[drivers.local]\ntype = \"local\"\n");
        assert!(e.contains("pools.default.instance_type"), "{e}");
        let e = err("[drivers.local]\ntype = \"local\"\n[pools.a]\ndriver = \"local\"\ninstance_type = \"x\"\n[pools.b]\ndriver = \"local\"\ninstance_type = \"x\"\n");
        assert!(e.contains("default_pool"), "{e}");
        let e = err("[drivers.local]\ntype = \"local\"\nops_per_second = 0\n");
        assert!(e.contains("ops_per_second"), "{e}");
        let pool = |price: &str| {
            format!("[drivers.local]\ntype = \"local\"\n[pools.default]\ndriver = \"local\"\ninstance_type = \"x\"\nprice_per_hour = {price}\n")
        };
        for bad in ["\"ten cents\"", "\"-0.10\"", "\"0.0000001\""] {
            let e = err(&pool(bad));
            assert!(e.contains("pools.default.price_per_hour"), "{bad}: {e}");
        }
        let ssh = |user: &str| {
            format!("[drivers.local]\ntype = \"local\"\n[pools.default]\ndriver = \"local\"\ninstance_type = \"x\"\nssh_user = {user:?}\n")
        };
        for bad in ["", "-oProxyCommand=x", "ec2 user", "root;reboot"] {
            let e = err(&ssh(bad));
            assert!(e.contains("pools.default.ssh_user"), "{bad:?}: {e}");
        }
        let c = Config::parse(&ssh("ec2-user"), "x").unwrap();
        assert_eq!(
            c.pools.values().next().unwrap().ssh_user.as_deref(),
            Some("ec2-user")
        );
        let e = err("[orgs]\nshutdown_threshold = \"lots\"\n");
        assert!(e.contains("orgs.shutdown_threshold"), "{e}");
        let e = err("[orgs]\nmin_runway = \"forever\"\n");
        assert!(e.contains("min_runway"), "{e}");
        assert!(err("[orgs]\nbudget = 3\n").contains("budget"));
    }

    #[test]
    fn prices_are_exact_dollars_as_text_or_number() {
        let c = |price: &str| {
            Config::parse(
                &format!("[drivers.local]\ntype = \"local\"\n[pools.default]\ndriver = \"local\"\ninstance_type = \"x\"\nprice_per_hour = {price}\n[orgs]\nshutdown_threshold = 2\n"),
                "x",
            )
            .unwrap()
        };
        let p = |c: &Config| c.pools[&c.default_pool].types[0].price_per_hour;
        assert_eq!(
            p(&c("\"0.10\"")),
            flotilla_domain::Money::from_micros(100_000)
        );
        assert_eq!(p(&c("0.1")), flotilla_domain::Money::from_micros(100_000));
        assert_eq!(p(&c("0.0116")), flotilla_domain::Money::from_micros(11_600));
        assert_eq!(
            c("1").engine.orgs.shutdown_threshold,
            flotilla_domain::Money::from_dollars(2).unwrap()
        );
        assert_eq!(
            Config::parse("", "x").unwrap().pools[&PoolName::new("default").unwrap()].types[0]
                .price_per_hour,
            flotilla_domain::Money::ZERO
        );
    }

    #[test]
    fn fake_driver_takes_fault_knobs() {
        let c = Config::parse(
            "[drivers.sim]\ntype = \"fake\"\n[drivers.sim.faults]\nboot_delay = \"2s\"\nquota = 10\n[pools.default]\ndriver = \"sim\"\ninstance_type = \"fake.small\"\n",
            "x",
        )
        .unwrap();
        match &c.drivers["sim"] {
            DriverConfig::Fake { faults, .. } => {
                assert_eq!(faults.boot_delay, Duration::from_secs(2));
                assert_eq!(faults.quota, Some(10));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err("[drivers.sim]\ntype = \"fake\"\n[drivers.sim.faults]\nboot_dealy = \"2s\"\n")
                .contains("boot_dealy")
        );
    }

    const EC2_POOL: &str = "[pools.default]\ndriver = \"aws\"\ninstance_type = \"t3.micro\"\n";

    fn ec2(driver_keys: &str) -> Result<Config, ConfigError> {
        Config::parse(
            &format!("[drivers.aws]\ntype = \"ec2\"\n{driver_keys}\n{EC2_POOL}"),
            "test.toml",
        )
    }

    fn ec2_driver(c: &Config) -> &Ec2Driver {
        match &c.drivers["aws"] {
            DriverConfig::Ec2(d) => d,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ec2_driver_takes_every_setting_and_a_throttle_budget() {
        let c = ec2(r#"
region = "eu-central-1"
endpoint_url = "https://ec2.eu-central-1.amazonaws.com"
image = "ami-0abc"
subnets = ["subnet-a", "subnet-b"]
security_groups = ["sg-1", "sg-2"]
key_name = "ops"
iam_instance_profile = "arn:aws:iam::123456789012:instance-profile/flotilla-node"
max_batch = 20
address = "public"
capacity_memory = "5m"
price_cache = "10m"
list_page_size = 500
request_timeout = "10s"
ops_per_second = 5
spot = { max_price = "0.05", fallback_on_demand = true }
health_check = { port = 8080, path = "/ready" }
"#)
        .unwrap();
        let d = ec2_driver(&c);
        assert_eq!(d.ops_per_second, Some(5.0));
        assert_eq!(c.drivers["aws"].ops_per_second(), Some(5.0));
        let s = &d.settings;
        assert_eq!(s.region, "eu-central-1");
        assert_eq!(s.image.as_deref(), Some("ami-0abc"));
        assert_eq!(s.subnets, ["subnet-a", "subnet-b"]);
        assert_eq!(s.security_groups, ["sg-1", "sg-2"]);
        assert_eq!(s.key_name.as_deref(), Some("ops"));
        assert!(s
            .iam_instance_profile
            .as_deref()
            .unwrap()
            .ends_with("/flotilla-node"));
        assert_eq!(s.max_batch, 20);
        assert_eq!(s.address, flotilla_driver_ec2::AddressKind::Public);
        assert_eq!(s.capacity_memory, Duration::from_secs(300));
        assert_eq!(s.price_cache, Duration::from_secs(600));
        assert_eq!(s.list_page_size, 500);
        assert_eq!(s.request_timeout, Duration::from_secs(10));
        let spot = s.spot.as_ref().unwrap();
        assert_eq!(spot.max_price.as_deref(), Some("0.05"));
        assert!(spot.fallback_on_demand);
        let check = s.health_check.as_ref().unwrap();
        assert_eq!((check.port, check.path.as_str()), (8080, "/ready"));
        // The pool needs no image of its own when the driver has one.
        assert_eq!(c.pools[&c.default_pool].image, None);
        // A fractional budget.
        let c = ec2("region = \"us-east-1\"\nimage = \"ami-1\"\nops_per_second = 0.5").unwrap();
        assert_eq!(ec2_driver(&c).ops_per_second, Some(0.5));
    }

    #[test]
    fn ec2_driver_defaults_are_the_drivers_own() {
        let c = ec2("region = \"us-east-1\"\nimage = \"ami-1\"").unwrap();
        let d = ec2_driver(&c);
        assert_eq!(d.ops_per_second, None);
        assert_eq!(
            d.settings,
            Ec2Config {
                image: Some("ami-1".into()),
                ..Ec2Config::new("us-east-1")
            }
        );
    }

    #[test]
    fn ec2_driver_refuses_unknown_keys_naming_the_key_and_file() {
        for (keys, key) in [
            ("region = \"us-east-1\"\nsubnet = \"subnet-a\"", "subnet"),
            ("region = \"us-east-1\"\nops_per_sec = 3", "ops_per_sec"),
            (
                "region = \"us-east-1\"\nspot = { max_prize = \"0.1\" }",
                "max_prize",
            ),
            (
                "region = \"us-east-1\"\nhealth_check = { port = 80, pth = \"/\" }",
                "pth",
            ),
            // Settings of other drivers are not ec2's.
            ("region = \"us-east-1\"\ngrace = \"5s\"", "grace"),
            // Pools' settings are written with the pools.
            ("region = \"us-east-1\"\npools = {}", "pools"),
        ] {
            let e = ec2(&format!("{keys}\nimage = \"ami-1\""))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("test.toml") && e.contains(key) && e.contains("unknown field"),
                "{keys:?}: {e}"
            );
        }
        // The keys offered instead include flotilla's own.
        let e = ec2("region = \"us-east-1\"\nimage = \"ami-1\"\nregoin = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`subnets`") && e.contains("`ops_per_second`"),
            "{e}"
        );
    }

    #[test]
    fn ec2_driver_refuses_bad_values_naming_the_driver() {
        for (keys, needle) in [
            ("image = \"ami-1\"", "region"),
            (
                "region = \"US West\"\nimage = \"ami-1\"",
                "drivers.aws: invalid ec2 driver configuration: region",
            ),
            (
                "region = \"us-east-1\"\nimage = \"ami-1\"\nendpoint_url = \"127.0.0.1:5000\"",
                "drivers.aws: invalid ec2 driver configuration: endpoint_url",
            ),
            (
                "region = \"us-east-1\"\nimage = \"ami-1\"\nmax_batch = 0",
                "drivers.aws: invalid ec2 driver configuration: max_batch",
            ),
            (
                "region = \"us-east-1\"\nimage = \"ami-1\"\nspot = { max_price = \"cheap\" }",
                "spot.max_price",
            ),
            (
                "region = \"us-east-1\"\nimage = \"ami-1\"\nhealth_check = { port = 0 }",
                "health_check.port",
            ),
            (
                "region = \"us-east-1\"\nimage = \"ami-1\"\nlist_page_size = 2",
                "list_page_size",
            ),
            (
                "region = \"us-east-1\"\nimage = \"ami-1\"\naddress = \"elastic\"",
                "elastic",
            ),
            (
                "region = \"us-east-1\"\nimage = \"ami-1\"\nmax_batch = -1",
                "max_batch",
            ),
            (
                "region = \"us-east-1\"\nimage = \"ami-1\"\nops_per_second = 0",
                "drivers.aws.ops_per_second",
            ),
            (
                "region = \"us-east-1\"\nimage = \"ami-1\"\nops_per_second = \"fast\"",
                "ops_per_second",
            ),
            // Neither the pool nor the driver says what to boot.
            ("region = \"us-east-1\"", "pools.default.image"),
        ] {
            let e = ec2(keys).unwrap_err().to_string();
            assert!(
                e.contains("test.toml") && e.contains(needle),
                "{keys:?}: {e}"
            );
        }
    }

    const EC2_DRIVER: &str = "[drivers.aws]\ntype = \"ec2\"\nregion = \"us-east-1\"\nimage = \"ami-1\"\nspot = { fallback_on_demand = true }\n";

    fn ec2_pool(pool_keys: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{EC2_DRIVER}{EC2_POOL}{pool_keys}"), "test.toml")
    }

    #[test]
    fn an_ec2_pool_carries_its_own_launch_settings_to_its_driver() {
        let c = ec2_pool(
            r#"
[pools.default.ec2]
spot = false
subnets = ["subnet-p"]
security_groups = ["sg-p"]
key_name = "pool-key"
iam_instance_profile = "pool-role"
health_check = { port = 9000, path = "/ready" }

[pools.gpu]
driver = "aws"
instance_type = "g5.xlarge"
ec2 = { spot = { max_price = "0.5" } }
"#,
        )
        .unwrap();
        let s = &ec2_driver(&c).settings;
        assert_eq!(s.pools.len(), 2);
        let default = s.launch_settings(Some(&c.default_pool));
        assert_eq!(default.spot, None);
        assert_eq!(default.subnets, ["subnet-p"]);
        assert_eq!(default.security_groups, ["sg-p"]);
        assert_eq!(default.key_name, Some("pool-key"));
        assert_eq!(default.iam_instance_profile, Some("pool-role"));
        assert_eq!(default.health_check.map(|h| h.port), Some(9000));
        let gpu = s.launch_settings(Some(&PoolName::new("gpu").unwrap()));
        let spot = gpu.spot.unwrap();
        assert_eq!(spot.max_price.as_deref(), Some("0.5"));
        assert!(
            !spot.fallback_on_demand,
            "the pool's spot table replaces the driver's"
        );
        // The driver's own settings are as written.
        assert!(s.spot.as_ref().unwrap().fallback_on_demand);
    }

    #[test]
    fn bad_ec2_pool_settings_are_refused_naming_the_key_and_file() {
        for (keys, needles) in [
            (
                "[pools.default.ec2]\nsubnet = [\"s\"]\n",
                &["subnet", "unknown field"][..],
            ),
            (
                "[pools.default.ec2]\nspot = { max_prize = \"1\" }\n",
                &["max_prize"][..],
            ),
            (
                "[pools.default.ec2]\nspot = { max_price = \"lots\" }\n",
                &["pools.default.ec2", "spot.max_price"][..],
            ),
            (
                "[pools.default.ec2]\nhealth_check = { port = 0 }\n",
                &["pools.default.ec2", "health_check.port"][..],
            ),
            (
                "[pools.default.ec2]\nsecurity_groups = [\"\"]\n",
                &["pools.default.ec2", "security_groups"][..],
            ),
            (
                "init_data = \"#!/bin/sh\\necho {{clustr}}\"\n",
                &["pools.default.init_data", "{{clustr}}"][..],
            ),
        ] {
            let e = ec2_pool(keys).unwrap_err().to_string();
            assert!(e.contains("test.toml"), "{keys:?}: {e}");
            for needle in needles {
                assert!(e.contains(needle), "{keys:?}: {e}");
            }
        }
        // Placeholders are known on ec2 pools only; a local pool's
        // init_data is its own business.
        Config::parse(
            "[pools.default]\ndriver = \"local\"\ninstance_type = \"local.small\"\n\
             init_data = \"echo {{anything}}\"\n[drivers.local]\ntype = \"local\"\n",
            "test.toml",
        )
        .unwrap();
    }

    #[test]
    fn ec2_pool_settings_on_another_driver_are_refused() {
        for driver in ["local", "fake"] {
            let e = err(&format!(
                "[drivers.d]\ntype = \"{driver}\"\n[pools.default]\ndriver = \"d\"\n\
                 instance_type = \"x\"\n[pools.default.ec2]\nspot = {{}}\n"
            ));
            assert!(
                e.contains("test.toml")
                    && e.contains("pools.default.ec2")
                    && e.contains(&format!("of type {driver}")),
                "{e}"
            );
        }
    }
}
