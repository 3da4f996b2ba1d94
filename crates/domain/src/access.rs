//! Who is asking. Every command carries a [`Caller`] so that authorisation
//! has one place to live; until accounts exist the server binds to loopback
//! and whoever reaches it acts as the local operator.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Anonymous,
    GithubMember,
    OrgMember,
    Admin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The account name; `None` for anonymous callers and the local operator.
    pub account: Option<String>,
    pub level: Level,
}

impl Caller {
    /// Whoever can reach a server that has no authentication configured.
    pub fn local_operator() -> Self {
        Self {
            account: None,
            level: Level::Admin,
        }
    }
}
