//! The drop box (issue 14, seed 003): clusters asked for by a file dropped
//! in an account's folder. Pure: what a file's name means, and the deploy
//! a `.cf-create` asks for once merged over its template, or why it is
//! refused (a stable code and a message, as its `.cf-failed` says). The
//! scanner reads the folders, parses the text (JSON or TOML) and acts on
//! the answers through the same front door as the API.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::names::ClusterName;

/// The largest trigger read; a larger one is refused unread.
pub const MAX_TRIGGER_BYTES: u64 = 64 * 1024;

/// The template a `.cf-create` that names none is merged over.
pub const DEFAULT_TEMPLATE: &str = "default";

/// What a file in an account's folder is to the drop box, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// `NAME.cf-create`: deploy (or resize) cluster NAME.
    Create,
    /// `NAME.cf-delete`: destroy cluster NAME (its content is not read).
    Delete,
    /// `NAME.cf-created`: written by flotilla, the running cluster.
    Created,
    /// `NAME.cf-deleted`: written by flotilla once NAME is destroyed.
    Deleted,
    /// `NAME.cf-failed`: written by flotilla, why a trigger was refused.
    Failed,
}

impl FileKind {
    const ALL: [FileKind; 5] = [
        FileKind::Create,
        FileKind::Delete,
        FileKind::Created,
        FileKind::Deleted,
        FileKind::Failed,
    ];

    /// Its suffix, the dot included.
    pub fn suffix(self) -> &'static str {
        match self {
            FileKind::Create => ".cf-create",
            FileKind::Delete => ".cf-delete",
            FileKind::Created => ".cf-created",
            FileKind::Deleted => ".cf-deleted",
            FileKind::Failed => ".cf-failed",
        }
    }

    /// Whether a user writes it to ask for something; flotilla's own
    /// status files never trigger anything.
    pub fn is_trigger(self) -> bool {
        matches!(self, FileKind::Create | FileKind::Delete)
    }

    /// What a file named `file_name` is, with the name before its suffix;
    /// None for a file that is none of the drop box's (left alone).
    pub fn of(file_name: &str) -> Option<(&str, FileKind)> {
        FileKind::ALL
            .into_iter()
            .find_map(|kind| Some((file_name.strip_suffix(kind.suffix())?, kind)))
    }
}

/// Why a trigger is refused: what its `.cf-failed` and its event say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable, as the API's error codes (`invalid_trigger`,
    /// `trigger_too_large`, `unknown_template`, or the deploy's own).
    pub code: String,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The cluster a trigger's name (before its suffix) names, or why the
/// name breaks the cluster-name rule.
pub fn trigger_cluster(stem: &str) -> Result<ClusterName, Refusal> {
    ClusterName::new(stem).map_err(|e| {
        Refusal::new(
            "invalid_cluster_name",
            format!("{stem:?} cannot name a cluster: {e}"),
        )
    })
}

/// What a `.cf-create` that says nothing gets (`[dropbox.templates.NAME]`
/// in the server's config).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropboxTemplate {
    /// Nodes of the cluster.
    #[serde(default = "one")]
    pub nodes: u32,
    /// How long it lives (`"1h"`).
    #[serde(default = "an_hour", with = "humantime_serde_compat")]
    pub ttl: Duration,
    /// Its pool; absent: the server's default (an organisation's cluster,
    /// the organisation's).
    #[serde(default)]
    pub pool: Option<String>,
    /// Whether anyone may read its status.
    #[serde(default)]
    pub public: bool,
}

fn one() -> u32 {
    1
}

fn an_hour() -> Duration {
    Duration::from_secs(3600)
}

impl Default for DropboxTemplate {
    fn default() -> Self {
        Self {
            nodes: one(),
            ttl: an_hour(),
            pool: None,
            public: false,
        }
    }
}

/// `"1h"` as a duration, for a template read from the config.
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// A `.cf-create` as written: every key optional, over its template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateFile {
    template: Option<String>,
    nodes: Option<u32>,
    /// `"2h"`, or seconds.
    ttl: Option<Ttl>,
    pool: Option<String>,
    public: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum Ttl {
    Seconds(u64),
    Written(String),
}

/// What a `.cf-create` asks for: a deploy of its cluster, by the account
/// whose folder it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateAsk {
    pub cluster: ClusterName,
    pub nodes: u32,
    pub ttl: Duration,
    pub pool: Option<String>,
    pub public: bool,
}

/// The deploy `.cf-create` of `cluster` asks for: `file` (its content,
/// already parsed from JSON or TOML; `None` for an empty file) merged over
/// the template it names (`templates`, [`DEFAULT_TEMPLATE`] if it names
/// none, flotilla's own defaults if that is not configured either).
pub fn create_ask(
    cluster: ClusterName,
    file: Option<serde_json::Value>,
    templates: &BTreeMap<String, DropboxTemplate>,
) -> Result<CreateAsk, Refusal> {
    let file: CreateFile = match file {
        None => CreateFile::default(),
        Some(value) => serde_json::from_value(value).map_err(|e| {
            Refusal::new(
                "invalid_trigger",
                format!("{e} (a .cf-create may say template, nodes, ttl, pool and public)"),
            )
        })?,
    };
    let template = match &file.template {
        Some(name) => templates.get(name).cloned().ok_or_else(|| {
            Refusal::new(
                "unknown_template",
                format!(
                    "no drop-box template {name:?}; this server has {}",
                    names(templates)
                ),
            )
        })?,
        None => templates.get(DEFAULT_TEMPLATE).cloned().unwrap_or_default(),
    };
    let ttl = match file.ttl {
        None => template.ttl,
        Some(Ttl::Seconds(s)) => Duration::from_secs(s),
        Some(Ttl::Written(text)) => humantime::parse_duration(&text).map_err(|e| {
            Refusal::new(
                "invalid_trigger",
                format!("ttl {text:?} is not a duration (\"2h\", \"30m\"): {e}"),
            )
        })?,
    };
    Ok(CreateAsk {
        cluster,
        nodes: file.nodes.unwrap_or(template.nodes),
        ttl,
        pool: file.pool.or(template.pool),
        public: file.public.unwrap_or(template.public),
    })
}

fn names(templates: &BTreeMap<String, DropboxTemplate>) -> String {
    if templates.is_empty() {
        return "none".to_owned();
    }
    templates
        .keys()
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterName {
        ClusterName::new("web").unwrap()
    }

    #[test]
    fn a_files_name_says_what_it_is() {
        assert_eq!(
            FileKind::of("web.cf-create"),
            Some(("web", FileKind::Create))
        );
        assert_eq!(
            FileKind::of("web.cf-delete"),
            Some(("web", FileKind::Delete))
        );
        assert_eq!(
            FileKind::of("web.cf-created"),
            Some(("web", FileKind::Created))
        );
        assert_eq!(
            FileKind::of("web.cf-failed"),
            Some(("web", FileKind::Failed))
        );
        assert_eq!(FileKind::of("notes.txt"), None);
        assert_eq!(FileKind::of("web.cf-create.swp"), None);
        assert!(FileKind::Create.is_trigger() && FileKind::Delete.is_trigger());
        assert!(!FileKind::Created.is_trigger() && !FileKind::Failed.is_trigger());
        assert!(trigger_cluster("web-1").is_ok());
        let e = trigger_cluster("../etc").unwrap_err();
        assert_eq!(e.code, "invalid_cluster_name");
        assert!(trigger_cluster("").is_err());
    }

    #[test]
    fn a_create_file_is_merged_over_its_template() {
        let templates = BTreeMap::from([
            (
                "default".to_owned(),
                DropboxTemplate {
                    nodes: 2,
                    ttl: Duration::from_secs(7200),
                    pool: Some("general".to_owned()),
                    public: false,
                },
            ),
            (
                "gpu".to_owned(),
                DropboxTemplate {
                    nodes: 1,
                    pool: Some("gpu".to_owned()),
                    ..DropboxTemplate::default()
                },
            ),
        ]);
        let ask = |v: Option<serde_json::Value>| create_ask(cluster(), v, &templates);
        assert_eq!(
            ask(None).unwrap(),
            CreateAsk {
                cluster: cluster(),
                nodes: 2,
                ttl: Duration::from_secs(7200),
                pool: Some("general".to_owned()),
                public: false,
            },
            "an empty file: the default template"
        );
        let gpu = ask(Some(
            serde_json::json!({"template": "gpu", "nodes": 4, "ttl": "30m"}),
        ))
        .unwrap();
        assert_eq!(
            (gpu.nodes, gpu.ttl, gpu.pool.as_deref()),
            (4, Duration::from_secs(1800), Some("gpu"))
        );
        let seconds = ask(Some(serde_json::json!({"ttl": 600, "public": true}))).unwrap();
        assert_eq!(
            (seconds.ttl, seconds.public),
            (Duration::from_secs(600), true)
        );

        let refused = |v: serde_json::Value| ask(Some(v)).unwrap_err();
        let e = refused(serde_json::json!({"template": "tiny"}));
        assert_eq!(e.code, "unknown_template");
        assert!(e.message.contains("\"default\", \"gpu\""), "{e}");
        let e = refused(serde_json::json!({"ComputeMaxNodes": "25"}));
        assert_eq!(e.code, "invalid_trigger");
        assert!(e.message.contains("ComputeMaxNodes"), "{e}");
        assert_eq!(
            refused(serde_json::json!({"ttl": "soon"})).code,
            "invalid_trigger"
        );
        assert_eq!(
            refused(serde_json::json!({"nodes": -1})).code,
            "invalid_trigger"
        );
        assert_eq!(refused(serde_json::json!([1, 2])).code, "invalid_trigger");

        // No template configured at all: flotilla's defaults.
        let bare = create_ask(cluster(), None, &BTreeMap::new()).unwrap();
        assert_eq!(
            (bare.nodes, bare.ttl, bare.pool, bare.public),
            (1, Duration::from_secs(3600), None, false)
        );
    }
}
