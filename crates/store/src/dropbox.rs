//! Drop-box triggers handled (issue 14): a row per trigger, keyed by its
//! path and the digest of its content, so a trigger is acted on once
//! however often it is seen (a scan after a restart, an event delivered
//! twice, a second leader), and what came of it can be written again (its
//! status file) after a crash.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use flotilla_domain::{ChangeKind, NewChange};

use crate::{Fence, StoreError};

/// A trigger as handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandledTrigger {
    /// Its path under the drop box: `ACCOUNT/NAME.cf-create`.
    pub path: String,
    /// The SHA-256 of its content (hex), or its S3 ETag.
    pub digest: String,
    /// Whose folder it was in.
    pub account: String,
    /// The cluster it named.
    pub cluster: String,
    /// What came of it: `deployed`, `destroyed`, or the refusal's code.
    pub outcome: String,
    /// What its status file says, in words.
    pub message: String,
    pub handled_at: DateTime<Utc>,
}

impl HandledTrigger {
    /// Whether it was refused (or failed): its outcome is a code.
    pub fn refused(&self) -> bool {
        !matches!(self.outcome.as_str(), "deployed" | "destroyed")
    }

    /// The change a refused trigger is noted with, in the same
    /// transaction; none for one acted on (its deploy or destroy has its
    /// own).
    pub fn change(&self) -> Option<NewChange> {
        self.refused().then(|| NewChange {
            kind: ChangeKind::DropboxRefused,
            key: self.account.clone(),
            payload: serde_json::json!({
                "path": self.path,
                "cluster": self.cluster,
                "code": self.outcome,
                "message": self.message,
            }),
        })
    }
}

#[async_trait]
pub trait DropboxStore: Send + Sync {
    /// Records `trigger` as handled, under the leader's `fence`, with a
    /// `dropbox.refused` change if it was refused: true if it is new;
    /// false, changing nothing, if a trigger of its path and digest was
    /// handled already.
    async fn note_trigger(
        &self,
        trigger: &HandledTrigger,
        fence: Fence,
    ) -> Result<bool, StoreError>;

    /// The trigger of `path` with content `digest`, if it was handled.
    async fn handled_trigger(
        &self,
        path: &str,
        digest: &str,
    ) -> Result<Option<HandledTrigger>, StoreError>;

    /// The triggers handled since `since`, the oldest first: what a new
    /// leader needs to keep the status files of the clusters they made.
    async fn handled_triggers(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<HandledTrigger>, StoreError>;

    /// Forgets the triggers handled before `before`, under the leader's
    /// `fence`; how many. A trigger's file is removed once it is handled,
    /// so only one seen again after a crash needs its record.
    async fn forget_triggers(&self, before: DateTime<Utc>, fence: Fence)
        -> Result<u64, StoreError>;
}
