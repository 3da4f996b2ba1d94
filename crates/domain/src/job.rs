//! Jobs: a script run once on an instance of its own, then gone. What its
//! submitter writes ([`JobDocument`]: a job file's fields, or the JSON body
//! of `POST /api/v1/jobs`), what it means once checked ([`JobSpec`]), the
//! states a job goes through ([`JobState`]) and what ends an attempt
//! ([`AttemptEnd`]), with the rule that says what follows
//! ([`after_attempt`]).
//!
//! As with pools, the document's JSON Schema is generated from the type
//! ([`job_schema`]); what a schema cannot say (a duration, a size, a path
//! that stays inside the work directory) [`JobDocument::spec`] checks, and
//! reports every problem at its JSON pointer.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::names::PoolName;
use crate::org::OrgName;
use crate::pool::{pointer, schema_of, Problem};
use crate::rollout::Whole;

/// The most attempts' worth of retries a job may ask for.
pub const MAX_RETRIES: u32 = 10;

/// The longest script a job may carry, in bytes.
pub const MAX_SCRIPT: usize = 64 * 1024;

/// A job as written. Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "Job",
    description = "A script run once on an instance of its own: a job file (`flotilla job submit FILE`), or the body of POST /api/v1/jobs."
)]
pub struct JobDocument {
    /// What `flotilla job list` calls it (several jobs may share a name).
    #[schemars(regex(pattern = r"^[A-Za-z0-9][-_.A-Za-z0-9]{0,63}$"))]
    pub name: String,
    /// The shell script it runs (`sh -c`), in the checkout when it names a
    /// `repo`; its exit status is the job's.
    #[schemars(length(min = 1, max = 65536))]
    pub script: String,
    /// A git repository checked out before the script runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    pub repo: Option<String>,
    /// The branch, tag or commit of `repo` to check out; its default
    /// branch when absent.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub git_ref: Option<String>,
    /// Environment variables the script gets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("propertyNames" = { "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,127}$" }))]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values are secret: the script gets
    /// them, and every answer, log and event shows them as `[redacted]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("propertyNames" = { "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,127}$" }))]
    pub secrets: BTreeMap<String, Secret>,
    /// The fewest vCPUs its instance must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub vcpus: Option<Whole>,
    /// The least memory its instance must have (`"4GiB"`, `"512MiB"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub memory: Option<String>,
    /// The least disk its instance must have (`"20GiB"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub disk: Option<String>,
    /// How long one attempt may run before it is ended (`"5m"`, `"2h"`);
    /// the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub max_runtime: Option<String>,
    /// The pool its instance comes from, or several (the cheapest type
    /// that fits among all of theirs); the default pool when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolChoice>,
    /// Whether to run on spot instances, cheaper and taken back at the
    /// cloud's will (the attempt is then retried).
    #[serde(default, skip_serializing_if = "is_false")]
    pub spot: bool,
    /// Higher runs first; among equals, the earlier submitted.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: i32,
    /// How many times an attempt that failed for the infrastructure's
    /// sake (an instance taken back, a boot that failed, a node lost), or
    /// that exited with one of `retry_exit_codes`, is tried again; 3 when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 10))]
    pub retries: Option<Whole>,
    /// Exit statuses of the script that mean "try again".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 1, max = 255)), extend("uniqueItems" = true))]
    pub retry_exit_codes: Vec<i32>,
    /// Paths, relative to the work directory, kept after it ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), inner(length(min = 1, max = 256)))]
    pub artifacts: Vec<String>,
    /// How long to keep a failed attempt's instance for debugging
    /// (`"30m"`), within the submitter's level's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub keep_on_failure: Option<String>,
    /// The organisation it is charged to (its budget applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9][-A-Za-z0-9]{0,39}$"))]
    pub org: Option<String>,
    /// The cluster it concerns: a secret whose value holds
    /// `{{cluster_token}}` gets a token for this cluster (one you may get),
    /// issued when each attempt starts and never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9][-A-Za-z0-9]{0,39}$"))]
    pub cluster: Option<String>,
}

/// What a secret's value holds to be given a token for the job's cluster.
pub const CLUSTER_TOKEN: &str = "{{cluster_token}}";

/// One pool, or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PoolChoice {
    One(#[schemars(length(min = 1, max = 64))] String),
    Several(#[schemars(length(min = 1, max = 20), inner(length(min = 1, max = 64)))] Vec<String>),
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// What a job needs of its instance; None: anything will do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub disk_gib: Option<u64>,
}

/// A repository checked out before the script runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub repo: String,
    pub git_ref: Option<String>,
}

/// What the server fills in where a job says nothing, and how far a job
/// may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobDefaults {
    /// A job's `max_runtime` when it names none; None: every job must.
    pub max_runtime: Option<Duration>,
    /// The longest `max_runtime` a job may ask for.
    pub max_max_runtime: Duration,
    /// Attempts retried when a job says nothing.
    pub retries: u32,
    /// The longest a failed attempt's instance may be kept for debugging.
    pub max_keep_on_failure: Duration,
}

impl Default for JobDefaults {
    fn default() -> Self {
        Self {
            max_runtime: None,
            max_max_runtime: Duration::from_secs(7 * 24 * 3600),
            retries: 3,
            max_keep_on_failure: Duration::from_secs(3600),
        }
    }
}

/// A job: what to run, where, and what to do when an attempt ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    pub name: String,
    pub script: String,
    pub checkout: Option<Checkout>,
    pub env: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, Secret>,
    pub resources: Resources,
    pub max_runtime: Duration,
    /// Where its instance may come from; empty: the default pool.
    pub pools: Vec<PoolName>,
    pub spot: bool,
    pub priority: i32,
    pub retries: u32,
    pub retry_exit_codes: Vec<i32>,
    pub artifacts: Vec<String>,
    pub keep_on_failure: Option<Duration>,
    pub org: Option<OrgName>,
    /// The cluster it concerns (see [`JobDocument::cluster`]).
    pub cluster: Option<crate::names::ClusterName>,
}

impl JobSpec {
    /// Whether a secret asks for a token for the job's cluster.
    pub fn wants_cluster_token(&self) -> bool {
        self.secrets
            .values()
            .any(|s| s.expose().contains(CLUSTER_TOKEN))
    }

    /// Its secrets, each `{{cluster_token}}` in them replaced by `token`.
    pub fn secrets_with_token(&self, token: &str) -> BTreeMap<String, Secret> {
        self.secrets
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Secret::new(v.expose().replace(CLUSTER_TOKEN, token)),
                )
            })
            .collect()
    }
}

impl JobSpec {
    /// `text` with the value of every secret replaced by `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        // A secret of several lines (a key, a credentials file) never shows
        // whole on one line of output: each of its lines is hidden too.
        let mut values: Vec<&str> = self
            .secrets
            .values()
            .map(Secret::expose)
            .flat_map(secret_parts)
            .collect();
        // The longest first, so a secret holding another is hidden whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        let mut out = text.to_owned();
        for v in values {
            out = out.replace(v, REDACTED);
        }
        out
    }
}

/// What of a secret's value is hidden wherever it shows: the whole value,
/// and for one of several lines, each of its lines long enough to tell
/// (a short line, a `}`, would hide everything else too).
pub fn secret_parts(value: &str) -> impl Iterator<Item = &str> {
    let several = value.contains('\n');
    std::iter::once(value).filter(|v| !v.is_empty()).chain(
        value
            .lines()
            .map(str::trim)
            .filter(move |l| several && l.len() >= 8),
    )
}

/// What stands for a secret's value wherever a job is shown.
pub const REDACTED: &str = "[redacted]";

/// A secret's value: written and read as a plain string, but never shown
/// by `Debug` (so no log line or panic message carries it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the job's environment only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl JobDocument {
    /// The document with what `spec` (its meaning on this server) filled
    /// in where it said nothing (`max_runtime`, `retries`): what is stored,
    /// so a change of the server's defaults does not change a job queued.
    pub fn resolved(&self, spec: &JobSpec) -> JobDocument {
        let mut doc = self.clone();
        doc.max_runtime = Some(humantime::format_duration(spec.max_runtime).to_string());
        doc.retries = Some(Whole(spec.retries));
        doc
    }

    /// What the document means, or everything wrong with it that a schema
    /// cannot say, given the server's `defaults`.
    pub fn spec(&self, defaults: &JobDefaults) -> Result<JobSpec, Vec<Problem>> {
        let mut problems = Vec::new();
        if self.script.trim().is_empty() {
            problems.push(Problem::at("script", "is empty: write the commands to run"));
        } else if self.script.len() > MAX_SCRIPT {
            problems.push(Problem::at(
                "script",
                format!(
                    "is {} bytes; a job's script is at most {MAX_SCRIPT} (put more in its repo)",
                    self.script.len()
                ),
            ));
        }
        let checkout = match (&self.repo, &self.git_ref) {
            (Some(repo), git_ref) => Some(Checkout {
                repo: repo.clone(),
                git_ref: git_ref.clone(),
            }),
            (None, Some(_)) => {
                problems.push(Problem::at("ref", "names a ref of no repo: set repo too"));
                None
            }
            (None, None) => None,
        };
        let names = self.env.keys().map(|n| ("env", n));
        for (key, name) in names.chain(self.secrets.keys().map(|n| ("secrets", n))) {
            if let Err(e) = env_name(name) {
                problems.push(Problem::new(pointer(&[key, name]), e));
            }
        }
        for name in self.secrets.keys().filter(|n| self.env.contains_key(*n)) {
            problems.push(Problem::new(
                pointer(&["secrets", name]),
                format!("{name} is in env too: name it in one of them"),
            ));
        }
        let memory_mib = size(self.memory.as_deref(), "memory", &mut problems)
            .map(|bytes| bytes.div_ceil(1024 * 1024));
        let disk_gib = size(self.disk.as_deref(), "disk", &mut problems)
            .map(|bytes| bytes.div_ceil(1024 * 1024 * 1024));
        let resources = Resources {
            vcpus: self.vcpus.map(|w| w.0),
            memory_mib,
            disk_gib,
        };
        if resources.vcpus == Some(0) {
            problems.push(Problem::at(
                "vcpus",
                "must be at least 1 (leave it out for any)",
            ));
        }
        let max_runtime = match (&self.max_runtime, defaults.max_runtime) {
            (Some(text), _) => duration(text, "max_runtime", &mut problems),
            (None, Some(default)) => Some(default),
            (None, None) => {
                problems.push(Problem::at(
                    "max_runtime",
                    "missing: say how long one attempt may run (max_runtime = \"30m\"); \
                     this server sets no default",
                ));
                None
            }
        };
        if let Some(runtime) = max_runtime {
            if runtime > defaults.max_max_runtime {
                problems.push(Problem::at(
                    "max_runtime",
                    format!(
                        "{} is longer than this server allows ({})",
                        humantime::format_duration(runtime),
                        humantime::format_duration(defaults.max_max_runtime)
                    ),
                ));
            }
        }
        let written_pools: Vec<(String, &str)> = match &self.pool {
            None => Vec::new(),
            Some(PoolChoice::One(p)) => vec![(pointer(&["pool"]), p.as_str())],
            Some(PoolChoice::Several(ps)) => ps
                .iter()
                .enumerate()
                .map(|(i, p)| (pointer(&["pool", &i.to_string()]), p.as_str()))
                .collect(),
        };
        let mut pools: Vec<PoolName> = Vec::new();
        for (at, name) in written_pools {
            match PoolName::new(name) {
                Ok(p) if pools.contains(&p) => {
                    problems.push(Problem::new(at, format!("{name} is named twice")))
                }
                Ok(p) => pools.push(p),
                Err(e) => problems.push(Problem::new(at, e.to_string())),
            }
        }
        if !(-1000..=1000).contains(&self.priority) {
            problems.push(Problem::at(
                "priority",
                format!("{} is outside -1000 to 1000", self.priority),
            ));
        }
        let retries = self.retries.map_or(defaults.retries, |w| w.0);
        if retries > MAX_RETRIES {
            problems.push(Problem::at(
                "retries",
                format!("{retries} is more than {MAX_RETRIES}"),
            ));
        }
        for (i, code) in self.retry_exit_codes.iter().enumerate() {
            if !(1..=255).contains(code) {
                problems.push(Problem::new(
                    pointer(&["retry_exit_codes", &i.to_string()]),
                    format!("{code} is no exit status that means failure (1 to 255)"),
                ));
            }
        }
        for (i, path) in self.artifacts.iter().enumerate() {
            if let Err(e) = artifact_path(path) {
                problems.push(Problem::new(pointer(&["artifacts", &i.to_string()]), e));
            }
        }
        let keep_on_failure = self
            .keep_on_failure
            .as_deref()
            .and_then(|text| duration(text, "keep_on_failure", &mut problems));
        if let Some(keep) = keep_on_failure.filter(|k| *k > defaults.max_keep_on_failure) {
            problems.push(Problem::at(
                "keep_on_failure",
                format!(
                    "{} is longer than a failed attempt's instance may be kept for you ({})",
                    humantime::format_duration(keep),
                    humantime::format_duration(defaults.max_keep_on_failure)
                ),
            ));
        }
        let org = self.org.as_deref().and_then(|o| {
            OrgName::new(o)
                .map_err(|e| problems.push(Problem::at("org", e.to_string())))
                .ok()
        });
        let cluster = self.cluster.as_deref().and_then(|c| {
            crate::names::ClusterName::new(c)
                .map_err(|e| problems.push(Problem::at("cluster", e.to_string())))
                .ok()
        });
        if self.cluster.is_none() {
            for (name, value) in &self.secrets {
                if value.expose().contains(CLUSTER_TOKEN) {
                    problems.push(Problem::new(
                        pointer(&["secrets", name]),
                        "asks for {{cluster_token}}: name the cluster the token is for (cluster = \"NAME\")",
                    ));
                }
            }
        }
        match max_runtime {
            Some(max_runtime) if problems.is_empty() => Ok(JobSpec {
                name: self.name.clone(),
                script: self.script.clone(),
                checkout,
                env: self.env.clone(),
                secrets: self.secrets.clone(),
                resources,
                max_runtime,
                pools,
                spot: self.spot,
                priority: self.priority,
                retries,
                retry_exit_codes: self.retry_exit_codes.clone(),
                artifacts: self.artifacts.clone(),
                keep_on_failure,
                org,
                cluster,
            }),
            _ => Err(problems),
        }
    }
}

fn env_name(name: &str) -> Result<(), String> {
    let ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(format!(
            "{name:?} is not a variable's name (letters, digits and '_', not first a digit)"
        ));
    }
    if name.starts_with("FLOTILLA_") {
        return Err(format!(
            "{name} is flotilla's: names starting with FLOTILLA_ are set for the job"
        ));
    }
    Ok(())
}

/// A size as written (`"4GiB"`), in bytes; a bare number is refused, since
/// its unit would be a guess.
fn size(text: Option<&str>, key: &str, problems: &mut Vec<Problem>) -> Option<u64> {
    let text = text?.trim();
    let refuse = |problems: &mut Vec<Problem>, why: String| {
        problems.push(Problem::at(key, why));
        None
    };
    if text.parse::<f64>().is_ok() {
        return refuse(
            problems,
            format!("{text:?} has no unit: write \"{text}GiB\" or \"{text}MiB\""),
        );
    }
    match text.parse::<bytesize::ByteSize>() {
        Ok(b) if b.as_u64() > 0 => Some(b.as_u64()),
        Ok(_) => refuse(
            problems,
            "must be more than nothing (leave it out for any)".into(),
        ),
        Err(_) => refuse(
            problems,
            format!("{text:?} is not a size (such as \"4GiB\", \"512MiB\")"),
        ),
    }
}

fn duration(text: &str, key: &str, problems: &mut Vec<Problem>) -> Option<Duration> {
    match humantime::parse_duration(text) {
        Ok(d) if d >= Duration::from_secs(1) => Some(d),
        Ok(_) => {
            problems.push(Problem::at(key, "must be at least a second"));
            None
        }
        Err(e) => {
            problems.push(Problem::at(
                key,
                format!("{text:?} is not a duration (such as \"30s\", \"5m\", \"2h\"): {e}"),
            ));
            None
        }
    }
}

/// A path inside the work directory: relative, and never through `..`.
fn artifact_path(path: &str) -> Result<(), String> {
    let p = std::path::Path::new(path);
    if p.is_absolute() || path.starts_with('~') {
        return Err(format!(
            "{path:?} is not inside the work directory: write it relative to it"
        ));
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("{path:?} leaves the work directory (..)"));
    }
    Ok(())
}

/// The longest path a kept file may have.
pub const MAX_KEPT_PATH: usize = 1024;

/// `path` (an entry of a job's `artifacts`, or a file under one) in the
/// one form a kept file is known by: relative to the work directory, `/`
/// between its parts, no `.`, `..` or empty part; none if it is no such
/// path.
pub fn kept_path(path: &str) -> Option<String> {
    if path.len() > MAX_KEPT_PATH
        || path.starts_with('/')
        || path.contains('\0')
        || path.contains('\\')
    {
        return None;
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        return None;
    }
    Some(parts.join("/"))
}

/// Whether the file at kept path `path` is one of a job's `artifacts`
/// entries, or under one of them.
pub fn is_artifact_of(path: &str, entries: &[String]) -> bool {
    entries.iter().filter_map(|e| kept_path(e)).any(|e| {
        path == e
            || path
                .strip_prefix(e.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// What the tag of an instance kept warm for jobs carries, and its
/// attempt's record once a job takes it: the SHA-256 (hex) of the token
/// its agent presents to ask for a job. The token itself is in the
/// instance's init data only; its hash, in tags anybody with the cloud's
/// read rights sees, gives nothing away.
pub fn warm_token_hash(token: &str) -> String {
    crate::sha256_hex(token.as_bytes())
}

/// The JSON Schema of a job.
pub fn job_schema() -> serde_json::Value {
    let mut schema = schema_of::<JobDocument>();
    schema["$id"] = "urn:flotilla:schema:job".into();
    schema
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for an instance (the reason says why).
    Queued,
    /// An attempt's instance is being made or booting.
    Starting,
    /// An attempt's script runs.
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// An attempt ran past `max_runtime`.
    TimedOut,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Starting,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Starting => "starting",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::TimedOut => "timed_out",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// Whether nothing more happens to the job.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::TimedOut
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum AttemptEnd {
    /// The script exited with `status`.
    Exited { status: i32 },
    /// The cloud took the instance back (a spot interruption).
    Interrupted,
    /// The instance never came up, or its agent never reported.
    BootFailed,
    /// The agent stopped reporting, or the instance vanished.
    Lost,
    /// It ran past the job's `max_runtime`.
    TimedOut,
    /// The job was cancelled.
    Cancelled,
}

impl AttemptEnd {
    /// Whether it ended for the infrastructure's sake, not the script's.
    pub fn is_infrastructure(self) -> bool {
        matches!(
            self,
            AttemptEnd::Interrupted | AttemptEnd::BootFailed | AttemptEnd::Lost
        )
    }
}

impl fmt::Display for AttemptEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptEnd::Exited { status } => write!(f, "exited with status {status}"),
            AttemptEnd::Interrupted => f.write_str("its instance was taken back by the cloud"),
            AttemptEnd::BootFailed => f.write_str("its instance never came up"),
            AttemptEnd::Lost => f.write_str("its agent stopped reporting"),
            AttemptEnd::TimedOut => f.write_str("it ran past its max_runtime"),
            AttemptEnd::Cancelled => f.write_str("it was cancelled"),
        }
    }
}

/// What follows an attempt's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAttempt {
    /// Queued again for another attempt.
    Retry,
    /// The job ends in this state.
    Ends(JobState),
}

/// What follows attempt number `attempt` (1 for the first) of `job`
/// ending with `end`: infrastructure failures and the exit statuses the
/// job names are tried again until `retries` retries are spent; the rest
/// end the job.
pub fn after_attempt(job: &JobSpec, attempt: u32, end: AttemptEnd) -> AfterAttempt {
    let retries_left = attempt <= job.retries;
    match end {
        AttemptEnd::Exited { status: 0 } => AfterAttempt::Ends(JobState::Succeeded),
        AttemptEnd::Exited { status } if job.retry_exit_codes.contains(&status) && retries_left => {
            AfterAttempt::Retry
        }
        AttemptEnd::Exited { .. } => AfterAttempt::Ends(JobState::Failed),
        AttemptEnd::TimedOut => AfterAttempt::Ends(JobState::TimedOut),
        AttemptEnd::Cancelled => AfterAttempt::Ends(JobState::Cancelled),
        e if e.is_infrastructure() && retries_left => AfterAttempt::Retry,
        _ => AfterAttempt::Ends(JobState::Failed),
    }
}

/// Where a queued job stands in the queue: the higher priority first,
/// then the earlier submitted, then the lower id (so no two tie).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueKey {
    pub priority: i32,
    pub submitted_at: chrono::DateTime<chrono::Utc>,
    pub id: u64,
}

impl Ord for QueueKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .priority
            .cmp(&self.priority)
            .then(self.submitted_at.cmp(&other.submitted_at))
            .then(self.id.cmp(&other.id))
    }
}

impl PartialOrd for QueueKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn kept_paths_have_one_form_and_stay_inside() {
        assert_eq!(
            kept_path("out/report.html").as_deref(),
            Some("out/report.html")
        );
        assert_eq!(kept_path("./out//dir/").as_deref(), Some("out/dir"));
        for bad in ["", "/etc/passwd", "a/../../b", "..", ".", "a\\b", "a\0b"] {
            assert_eq!(kept_path(bad), None, "{bad:?}");
        }
        let entries = ["out/dir/".to_owned(), "./report.txt".to_owned()];
        assert!(is_artifact_of("out/dir/a/b.txt", &entries));
        assert!(is_artifact_of("report.txt", &entries));
        assert!(!is_artifact_of("out/dirt.txt", &entries));
        assert!(!is_artifact_of("out", &entries));
    }

    use super::*;

    fn doc(json: serde_json::Value) -> JobDocument {
        serde_json::from_value(json).unwrap()
    }

    fn problems(json: serde_json::Value) -> Vec<String> {
        doc(json)
            .spec(&JobDefaults::default())
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_secret_of_several_lines_is_hidden_line_by_line() {
        let spec = doc(serde_json::json!({
            "name": "x", "script": "true", "max_runtime": "1m",
            "secrets": {"KEY": "-----BEGIN KEY-----\nMIIEvQIBADANBgkq\n}\n-----END KEY-----\n", "T": "t0ken"},
        }))
        .spec(&JobDefaults::default())
        .unwrap();
        let shown = spec.redact("line MIIEvQIBADANBgkq and t0ken and a } stays");
        assert_eq!(shown, "line [redacted] and [redacted] and a } stays");
    }

    #[test]
    fn the_issues_hello_job_means_a_spec() {
        let hello: JobDocument = toml::from_str(
            "name = \"hello\"\nscript = \"echo hello; exit 3\"\nmax_runtime = \"5m\"\n",
        )
        .unwrap();
        let spec = hello.spec(&JobDefaults::default()).unwrap();
        assert_eq!(spec.max_runtime, Duration::from_secs(300));
        assert_eq!(spec.retries, 3);
        assert!(spec.pools.is_empty() && spec.checkout.is_none());
        assert_eq!(spec.resources, Resources::default());
    }

    #[test]
    fn resources_sizes_and_pools_are_read() {
        let spec = doc(serde_json::json!({
            "name": "build", "script": "make", "max_runtime": "2h",
            "vcpus": 4, "memory": "7.5GiB", "disk": "20 GB",
            "pool": ["a", "b"], "spot": true, "priority": 5, "retries": 1,
            "retry_exit_codes": [75], "artifacts": ["out/report.html"],
            "keep_on_failure": "30m", "org": "physics",
            "repo": "https://example.org/x.git", "ref": "main",
        }))
        .spec(&JobDefaults::default())
        .unwrap();
        assert_eq!(spec.resources.vcpus, Some(4));
        assert_eq!(spec.resources.memory_mib, Some(7680));
        assert_eq!(
            spec.resources.disk_gib,
            Some(19),
            "20 GB is 18.6 GiB, rounded up"
        );
        let pools: Vec<&str> = spec.pools.iter().map(PoolName::as_str).collect();
        assert_eq!(pools, ["a", "b"]);
        assert_eq!(spec.keep_on_failure, Some(Duration::from_secs(1800)));
        assert_eq!(spec.checkout.unwrap().git_ref.as_deref(), Some("main"));
    }

    #[test]
    fn every_problem_is_reported_at_its_pointer() {
        let p = problems(serde_json::json!({
            "name": "x", "script": "  ", "ref": "main",
            "env": {"1X": "a", "FLOTILLA_TOKEN": "b", "SAME": "c"},
            "secrets": {"SAME": "d"},
            "memory": "4096", "disk": "lots", "max_runtime": "forever",
            "pool": ["a", "a", "no pool"], "retries": 11,
            "retry_exit_codes": [0], "artifacts": ["/etc/passwd", "a/../../b"],
            "keep_on_failure": "0s", "org": "-x",
        }));
        let pointers: Vec<&str> = p.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            pointers,
            [
                "/script",
                "/ref",
                "/env/1X",
                "/env/FLOTILLA_TOKEN",
                "/secrets/SAME",
                "/memory",
                "/disk",
                "/max_runtime",
                "/pool/1",
                "/pool/2",
                "/retries",
                "/retry_exit_codes/0",
                "/artifacts/0",
                "/artifacts/1",
                "/keep_on_failure",
                "/org"
            ],
            "{p:#?}"
        );
        assert!(p[5].contains("no unit"), "{}", p[5]);
    }

    #[test]
    fn max_runtime_comes_from_the_job_or_the_server_within_its_limit() {
        let job = serde_json::json!({"name": "x", "script": "true"});
        let p = problems(job.clone());
        assert!(p[0].starts_with("/max_runtime: missing"), "{p:?}");
        let defaults = JobDefaults {
            max_runtime: Some(Duration::from_secs(600)),
            max_max_runtime: Duration::from_secs(3600),
            ..JobDefaults::default()
        };
        assert_eq!(
            doc(job).spec(&defaults).unwrap().max_runtime,
            Duration::from_secs(600)
        );
        let long = doc(serde_json::json!({"name": "x", "script": "true", "max_runtime": "2h"}));
        let p = long.spec(&defaults).unwrap_err();
        assert!(
            p[0].to_string()
                .contains("longer than this server allows (1h)"),
            "{p:?}"
        );
    }

    #[test]
    fn secrets_are_redacted_the_longest_first() {
        let spec = doc(serde_json::json!({
            "name": "x", "script": "true", "max_runtime": "1m",
            "secrets": {"A": "hunter2", "B": "hunter2-and-more", "EMPTY": ""}
        }))
        .spec(&JobDefaults::default())
        .unwrap();
        assert_eq!(
            spec.redact("got hunter2-and-more then hunter2"),
            "got [redacted] then [redacted]"
        );
        assert_eq!(spec.redact("nothing"), "nothing");
    }

    #[test]
    fn a_secret_is_never_in_debug_output() {
        let d = doc(serde_json::json!({
            "name": "x", "script": "true", "max_runtime": "1m",
            "secrets": {"TOKEN": "hunter2"}
        }));
        let spec = d.spec(&JobDefaults::default()).unwrap();
        assert!(!format!("{d:?} {spec:?}").contains("hunter2"));
        assert_eq!(spec.secrets["TOKEN"].expose(), "hunter2");
        assert_eq!(
            serde_json::to_value(&d).unwrap()["secrets"]["TOKEN"],
            "hunter2",
            "stored as written"
        );
    }

    #[test]
    fn an_attempts_end_decides_what_follows() {
        let spec = doc(serde_json::json!({
            "name": "x", "script": "true", "max_runtime": "1m",
            "retries": 2, "retry_exit_codes": [75]
        }))
        .spec(&JobDefaults::default())
        .unwrap();
        use AfterAttempt::{Ends, Retry};
        use JobState::*;
        let exited = |status| AttemptEnd::Exited { status };
        let table = [
            (1, exited(0), Ends(Succeeded)),
            (1, exited(1), Ends(Failed)),
            (1, exited(75), Retry),
            (2, exited(75), Retry),
            (3, exited(75), Ends(Failed)),
            (1, AttemptEnd::Interrupted, Retry),
            (2, AttemptEnd::BootFailed, Retry),
            (3, AttemptEnd::Lost, Ends(Failed)),
            (1, AttemptEnd::TimedOut, Ends(TimedOut)),
            (1, AttemptEnd::Cancelled, Ends(Cancelled)),
        ];
        for (attempt, end, expected) in table {
            assert_eq!(
                after_attempt(&spec, attempt, end),
                expected,
                "attempt {attempt}, {end:?}"
            );
        }
    }

    #[test]
    fn the_queue_runs_higher_priority_first_then_the_oldest() {
        let t = |s: i64| chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let key = |priority, at, id| QueueKey {
            priority,
            submitted_at: t(at),
            id,
        };
        let mut queue = [
            key(0, 5, 1),
            key(10, 9, 2),
            key(0, 1, 3),
            key(-5, 0, 4),
            key(0, 1, 0),
        ];
        queue.sort();
        let ids: Vec<u64> = queue.iter().map(|k| k.id).collect();
        assert_eq!(ids, [2, 0, 3, 1, 4]);
    }

    #[test]
    fn states_are_named_and_final_ones_known() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert!(JobState::TimedOut.is_final() && !JobState::Running.is_final());
    }

    #[test]
    fn the_schema_requires_name_and_script() {
        let s = job_schema();
        assert_eq!(s["required"], serde_json::json!(["name", "script"]));
        assert_eq!(s["additionalProperties"], false);
        assert!(s["properties"].get("ref").is_some());
    }
}
