//! Notifications (issue 14): who hears of which changes, where, and how
//! a delivery that failed is tried again. Pure: the notifier on the leader
//! reads the feed, asks [`Pattern::matches`] and [`may_read_change`] which
//! subscriptions a change is for, and [`retry_after`] when to try again.
//!
//! [`may_read_change`]: crate::may_read_change

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::change::{Change, ChangeEntity, ChangeKind};

/// At most this many patterns in one subscription.
pub const MAX_PATTERNS: usize = 20;
/// At most this many subscriptions per account.
pub const MAX_SUBSCRIPTIONS: usize = 20;
/// The longest webhook URL or mail address taken.
pub const MAX_TARGET_LEN: usize = 2048;
/// The kind of the event `notify test` sends: no change of the feed.
pub const TEST_KIND: &str = "notification.test";

/// Which events a subscription wants: `*`, every change of one entity
/// (`cluster.*`), or one kind (`cluster.deployed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, String> {
        let s = s.trim();
        let known = if s == "*" {
            true
        } else if let Some(entity) = s.strip_suffix(".*") {
            ChangeEntity::ALL.iter().any(|e| e.prefix() == entity)
        } else {
            ChangeKind::parse(s).is_some()
        };
        if known {
            Ok(Pattern(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} names no event: write `*`, an entity and `.*` ({}), or an event's \
                 name such as `cluster.deployed` (see `flotilla events` for names)",
                ChangeEntity::ALL
                    .iter()
                    .map(|e| format!("{}.*", e.prefix()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }

    /// Patterns separated by commas: at least one, at most
    /// [`MAX_PATTERNS`].
    pub fn parse_list(s: &str) -> Result<Vec<Pattern>, String> {
        let patterns = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Pattern::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if patterns.is_empty() {
            return Err("name at least one event, such as `cluster.*`".to_owned());
        }
        if patterns.len() > MAX_PATTERNS {
            return Err(format!("at most {MAX_PATTERNS} event patterns"));
        }
        Ok(patterns)
    }

    /// Whether an event of kind `kind` (a change's stored name) is wanted.
    /// A test is wanted by every subscription.
    pub fn matches(&self, kind: &str) -> bool {
        if self.0 == "*" || kind == TEST_KIND {
            return true;
        }
        match self.0.strip_suffix('*') {
            Some(prefix) => kind.starts_with(prefix),
            None => self.0 == kind,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The patterns as stored: comma-separated.
pub fn patterns_text(patterns: &[Pattern]) -> String {
    patterns
        .iter()
        .map(Pattern::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

/// Where a subscription's news goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// A mail to this address, by the server's SMTP relay.
    Email(String),
    /// An HTTP POST of each event, signed, to this URL.
    Webhook(String),
}

impl Channel {
    /// A mail address, checked for what a relay would refuse: one `@`
    /// between a local part and a domain, no spaces or controls.
    pub fn email(address: &str) -> Result<Channel, String> {
        let a = address.trim();
        let ok = a.len() <= 254
            && !a.chars().any(|c| c.is_whitespace() || c.is_control())
            && !a.contains(['<', '>', ',', ';', '"'])
            && matches!(a.split_once('@'), Some((local, domain))
                if !local.is_empty() && !domain.is_empty() && !domain.contains('@')
                    && !domain.starts_with('.') && !domain.ends_with('.'));
        if ok {
            Ok(Channel::Email(a.to_owned()))
        } else {
            Err(format!(
                "{address:?} is not a mail address (write one, like ann@example.org)"
            ))
        }
    }

    /// A webhook's URL: `http` or `https`, with a host, no credentials.
    pub fn webhook(url: &str) -> Result<Channel, String> {
        let bad = |why: &str| format!("{url:?} is not a webhook URL: {why}");
        if url.len() > MAX_TARGET_LEN {
            return Err(bad(&format!("longer than {MAX_TARGET_LEN} characters")));
        }
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("write an http:// or https:// URL"));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("it names no host"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad(
                "it carries credentials; the body is signed with the subscription's secret instead",
            ));
        }
        if parsed.fragment().is_some() {
            return Err(bad("a fragment is never sent; leave it out"));
        }
        Ok(Channel::Webhook(parsed.to_string()))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Channel::Email(_) => "email",
            Channel::Webhook(_) => "webhook",
        }
    }

    pub fn target(&self) -> &str {
        match self {
            Channel::Email(t) | Channel::Webhook(t) => t,
        }
    }

    /// Back from its stored kind and target.
    pub fn from_stored(kind: &str, target: &str) -> Option<Channel> {
        match kind {
            "email" => Some(Channel::Email(target.to_owned())),
            "webhook" => Some(Channel::Webhook(target.to_owned())),
            _ => None,
        }
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Not yet sent, or to be tried again at its `next_at`.
    Pending,
    Delivered,
    /// Given up: tried as often as allowed, or refused for good.
    Failed,
    /// The same event for the same record went to this subscription
    /// within the window: not sent again.
    Deduplicated,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 4] = [
        DeliveryState::Pending,
        DeliveryState::Delivered,
        DeliveryState::Failed,
        DeliveryState::Deduplicated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Deduplicated => "deduplicated",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// How long to wait before try `attempts + 1`, after `attempts` failed:
/// `base`, doubled each time, at most an hour; none once `max_attempts`
/// were made (give up).
pub fn retry_after(attempts: u32, base: Duration, max_attempts: u32) -> Option<Duration> {
    if attempts >= max_attempts {
        return None;
    }
    let factor = 1u32 << attempts.saturating_sub(1).min(16);
    Some(base.saturating_mul(factor).min(Duration::from_secs(3600)))
}

/// What makes two events "the same" for deduplication: the kind, the
/// record, and what distinguishes events of one kind about one record (a
/// cluster's error code, its node counts, a refused trigger's file, the
/// subscription disabled). Read from the event as sent (`event_json`),
/// so a restarted notifier computes it from what it queued.
pub fn dedup_key(event: &serde_json::Value) -> String {
    let kind = event["kind"].as_str().unwrap_or_default();
    let key = event["key"].as_str().unwrap_or_default();
    let d = &event["details"];
    let part = |field: &str| match &d[field] {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let what = match kind {
        "cluster.error" => part("code"),
        "cluster.nodes" => format!("{}/{}", part("ready"), part("total")),
        "dropbox.refused" => part("path"),
        "notification.disabled" => part("subscription"),
        _ => String::new(),
    };
    format!("{kind}\u{1f}{key}\u{1f}{what}")
}

/// An event as a subscriber receives it: the change, named, with its
/// details. The same JSON is a webhook's body and a mail's attachment of
/// facts.
pub fn event_json(change: &Change) -> serde_json::Value {
    serde_json::json!({
        "seq": change.seq,
        "kind": change.kind.as_str(),
        "key": change.key,
        "at": change.at,
        "details": change.payload,
    })
}

/// The event `notify test` sends to a subscription.
pub fn test_event(subscription: i64, at: DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({
        "seq": null,
        "kind": TEST_KIND,
        "key": subscription.to_string(),
        "at": at,
        "details": {"message": "a test of this subscription: it works"},
    })
}

/// One line saying what an event is, for a mail.
pub fn event_line(event: &serde_json::Value) -> String {
    let kind = event["kind"].as_str().unwrap_or("event");
    let key = event["key"].as_str().unwrap_or_default();
    let at = event["at"].as_str().unwrap_or_default();
    let details = &event["details"];
    let said = details["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let mut parts = Vec::new();
            for field in ["nodes", "ready", "total", "state", "code", "expires_at"] {
                match &details[field] {
                    serde_json::Value::Null => {}
                    serde_json::Value::String(s) => parts.push(format!("{field} {s}")),
                    v => parts.push(format!("{field} {v}")),
                }
            }
            parts.join(", ")
        });
    if said.is_empty() {
        format!("{at}  {kind}  {key}")
    } else {
        format!("{at}  {kind}  {key}: {said}")
    }
}

/// A mail's subject and text for `events` (at least one): one event says
/// what it is; several make one digest.
pub fn mail_text(events: &[serde_json::Value], server: &str) -> (String, String) {
    let lines: Vec<String> = events.iter().map(event_line).collect();
    let subject = match events {
        [one] => format!(
            "flotilla: {} {}",
            one["kind"].as_str().unwrap_or("event"),
            one["key"].as_str().unwrap_or_default()
        ),
        many => format!("flotilla: {} events", many.len()),
    };
    let mut body = String::new();
    if events.len() > 1 {
        body.push_str(&format!(
            "{} events from flotilla ({server}), oldest first:\n\n",
            events.len()
        ));
    } else {
        body.push_str(&format!("From flotilla ({server}):\n\n"));
    }
    for l in &lines {
        body.push_str(l);
        body.push('\n');
    }
    body.push_str(
        "\nYou receive this because of a subscription: `flotilla notify list` shows yours,\n\
         `flotilla notify remove ID` ends one.\n",
    );
    (subject, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_name_known_events_and_match_them() {
        let all = Pattern::parse("*").unwrap();
        let clusters = Pattern::parse("cluster.*").unwrap();
        let deployed = Pattern::parse(" cluster.deployed ").unwrap();
        let budget = Pattern::parse("org.budget_exhausted").unwrap();
        assert!(all.matches("job.ended"));
        assert!(clusters.matches("cluster.expired"));
        assert!(!clusters.matches("clusterx.expired"));
        assert!(!clusters.matches("org.created"));
        assert!(deployed.matches("cluster.deployed"));
        assert!(!deployed.matches("cluster.destroyed"));
        assert!(budget.matches("org.budget_exhausted"));
        for p in [&all, &clusters, &deployed, &budget] {
            assert!(p.matches(TEST_KIND), "a test reaches every subscription");
        }
        for bad in [
            "cluster.exploded",
            "clusters.*",
            "cluster",
            "",
            "*.*",
            "cluster.d*",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
        let list = Pattern::parse_list("cluster.*, org.*,").unwrap();
        assert_eq!(patterns_text(&list), "cluster.*,org.*");
        assert!(Pattern::parse_list(" , ").is_err());
        assert!(Pattern::parse_list(&vec!["job.*"; MAX_PATTERNS + 1].join(",")).is_err());
        let err = Pattern::parse("cluster.exploded").unwrap_err();
        assert!(err.contains("cluster.*"), "{err}");
    }

    #[test]
    fn channels_are_checked() {
        assert_eq!(
            Channel::email(" ann@example.org").unwrap(),
            Channel::Email("ann@example.org".into())
        );
        for bad in [
            "ann",
            "@example.org",
            "ann@",
            "ann@@x",
            "a nn@x.org",
            "ann@x.org>",
            "ann@.x",
            "ann@x.org\r\nBcc: eve@x.org",
        ] {
            assert!(Channel::email(bad).is_err(), "{bad:?}");
        }
        let hook = Channel::webhook("https://hooks.example.org/flotilla?team=7").unwrap();
        assert_eq!(hook.kind(), "webhook");
        assert_eq!(hook.target(), "https://hooks.example.org/flotilla?team=7");
        for bad in [
            "ftp://example.org/",
            "https://user:pw@example.org/",
            "not a url",
            "https://example.org/#frag",
            "file:///etc/passwd",
        ] {
            assert!(Channel::webhook(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Channel::from_stored(hook.kind(), hook.target()),
            Some(hook.clone())
        );
        assert_eq!(Channel::from_stored("pigeon", "x"), None);
    }

    #[test]
    fn the_same_event_is_its_kind_record_and_what_sets_it_apart() {
        let event = |kind: ChangeKind, key: &str, payload: serde_json::Value| {
            event_json(&Change {
                seq: 1,
                kind,
                key: key.into(),
                at: DateTime::from_timestamp(0, 0).unwrap(),
                payload,
            })
        };
        let k = |kind, key: &str, payload| dedup_key(&event(kind, key, payload));
        let nodes = |ready: u32| {
            k(
                ChangeKind::ClusterNodes,
                "web",
                serde_json::json!({"ready": ready, "total": 2}),
            )
        };
        assert_eq!(nodes(1), nodes(1));
        assert_ne!(nodes(1), nodes(2), "another count is news");
        let refused = |path: &str| {
            k(
                ChangeKind::DropboxRefused,
                "ann",
                serde_json::json!({"path": path, "code": "invalid_trigger"}),
            )
        };
        assert_ne!(refused("ann/a.cf-create"), refused("ann/b.cf-create"));
        let deployed = |key: &str, nodes: u32| {
            k(
                ChangeKind::ClusterDeployed,
                key,
                serde_json::json!({"nodes": nodes}),
            )
        };
        assert_eq!(deployed("web", 1), deployed("web", 3));
        assert_ne!(deployed("web", 1), deployed("db", 1));
    }

    #[test]
    fn retries_back_off_and_give_up() {
        let base = Duration::from_secs(10);
        assert_eq!(retry_after(1, base, 5), Some(Duration::from_secs(10)));
        assert_eq!(retry_after(2, base, 5), Some(Duration::from_secs(20)));
        assert_eq!(retry_after(4, base, 5), Some(Duration::from_secs(80)));
        assert_eq!(retry_after(5, base, 5), None, "given up");
        assert_eq!(
            retry_after(30, base, 100),
            Some(Duration::from_secs(3600)),
            "at most an hour"
        );
        for s in DeliveryState::ALL {
            assert_eq!(DeliveryState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn a_mail_says_what_happened_and_bursts_make_one_digest() {
        let change = Change {
            seq: 7,
            kind: ChangeKind::ClusterDeployed,
            key: "web".into(),
            at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            payload: serde_json::json!({"nodes": 3, "is_public": false}),
        };
        let one = event_json(&change);
        let (subject, body) = mail_text(std::slice::from_ref(&one), "alpha");
        assert_eq!(subject, "flotilla: cluster.deployed web");
        assert!(body.contains("cluster.deployed  web: nodes 3"), "{body}");
        let test = test_event(4, change.at);
        let (subject, body) = mail_text(&[one, test], "alpha");
        assert_eq!(subject, "flotilla: 2 events");
        assert!(body.contains("2 events"), "{body}");
        assert!(body.contains("notification.test  4: a test"), "{body}");
    }
}
