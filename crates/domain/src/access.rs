//! Who is asking, and what they may do: the authorisation rules of seed 000
//! for DEPLOY, DESTROY and STATUS, the per-level limits, and the rules for
//! account management. Every rule is a plain function of the caller and the
//! request, so the whole matrix can be tested without a server.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::names::{ClusterName, PoolName, Username};

/// The four user levels, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Anonymous,
    GithubMember,
    OrgMember,
    Admin,
}

impl Level {
    pub const ALL: [Level; 4] = [
        Level::Anonymous,
        Level::GithubMember,
        Level::OrgMember,
        Level::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Anonymous => "anonymous",
            Level::GithubMember => "github_member",
            Level::OrgMember => "org_member",
            Level::Admin => "admin",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("level {0:?} is not valid: use anonymous, github_member, org_member or admin")]
pub struct LevelError(pub String);

impl std::str::FromStr for Level {
    type Err = LevelError;
    fn from_str(s: &str) -> Result<Self, LevelError> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| LevelError(s.to_owned()))
    }
}

/// How an account signs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// Username and password, kept by flotilla.
    Local,
    /// A GitHub token, checked against the GitHub API at each login.
    Github,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Local => "local",
            AccountKind::Github => "github",
        }
    }
}

impl fmt::Display for AccountKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The clusters an account may act on: its own (named after it) and those
/// an admin granted.
pub fn allowed_clusters(
    username: &Username,
    grants: &BTreeSet<ClusterName>,
) -> BTreeSet<ClusterName> {
    let mut allowed = grants.clone();
    allowed.insert(username.own_cluster());
    allowed
}

/// Who is asking, as authenticated by the edge (a verified token, or no
/// token at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The account; `None` for anonymous callers and the server itself.
    pub account: Option<Username>,
    pub level: Level,
    /// The clusters this caller may act on (ignored for admins).
    pub allowed: BTreeSet<ClusterName>,
}

impl Caller {
    /// No credentials: may read the status of public clusters, nothing else.
    pub fn anonymous() -> Self {
        Self {
            account: None,
            level: Level::Anonymous,
            allowed: BTreeSet::new(),
        }
    }

    /// A signed-in account at `level`, allowed its own cluster (grants and
    /// organisations come from the store and the access layer).
    pub fn signed_in(username: Username, level: Level) -> Self {
        Self {
            allowed: allowed_clusters(&username, &BTreeSet::new()),
            account: Some(username),
            level,
        }
    }

    /// The server acting on its own behalf (scheduled deletions), and
    /// in-process tests and benchmarks: an admin without an account.
    pub fn local_operator() -> Self {
        Self {
            account: None,
            level: Level::Admin,
            allowed: BTreeSet::new(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.level == Level::Admin
    }

    /// Whether `cluster` is one of this caller's own clusters (always true
    /// for admins).
    pub fn may_act_on(&self, cluster: &ClusterName) -> bool {
        self.is_admin() || (self.account.is_some() && self.allowed.contains(cluster))
    }
}

/// What a non-admin level may deploy. Admins have no limits and anonymous
/// callers may not deploy at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelLimits {
    /// Most nodes in one cluster; 0 means this level may not deploy.
    pub max_nodes: u32,
    /// Longest time-to-live of a deploy.
    pub max_ttl: Duration,
    /// The longest a job's `keep_on_failure` may keep a failed attempt's
    /// instance; none: as long as the server's `[jobs]
    /// max_keep_on_failure`.
    pub max_keep_on_failure: Option<Duration>,
}

/// The per-level limits, from config `[levels.*]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelPolicy {
    pub github_member: LevelLimits,
    pub org_member: LevelLimits,
}

impl Default for LevelPolicy {
    /// Seed 000: GitHub members see public clusters but do not deploy;
    /// organisation members deploy small clusters for a working day.
    fn default() -> Self {
        Self {
            github_member: LevelLimits {
                max_nodes: 0,
                max_ttl: Duration::from_secs(3600),
                max_keep_on_failure: None,
            },
            org_member: LevelLimits {
                max_nodes: 10,
                max_ttl: Duration::from_secs(12 * 3600),
                max_keep_on_failure: None,
            },
        }
    }
}

impl LevelPolicy {
    /// The limits of `level`; `None` for admins (no limits) and anonymous
    /// callers (no deploys).
    pub fn limits(&self, level: Level) -> Option<LevelLimits> {
        match level {
            Level::GithubMember => Some(self.github_member),
            Level::OrgMember => Some(self.org_member),
            Level::Anonymous | Level::Admin => None,
        }
    }

    /// The job defaults and bounds a caller at `level` submits under: the
    /// server's, with `keep_on_failure` bounded by the level's too.
    pub fn job_defaults(&self, level: Level, server: &crate::JobDefaults) -> crate::JobDefaults {
        let mut defaults = *server;
        if let Some(max) = self.limits(level).and_then(|l| l.max_keep_on_failure) {
            defaults.max_keep_on_failure = defaults.max_keep_on_failure.min(max);
        }
        defaults
    }
}

/// Why a request was refused. `NotAuthenticated` is 401 (credentials might
/// help); everything else is 403 with [`Denied::code`] naming the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("this needs a signed-in account: log in with `flotilla login` or send a bearer token")]
    NotAuthenticated,
    #[error("only admins may deploy public clusters; deploy with is_public false")]
    PublicNeedsAdmin,
    #[error("cluster {cluster} is not one of your clusters ({allowed}); ask an admin to grant it")]
    ClusterNotAllowed {
        cluster: ClusterName,
        allowed: String,
    },
    #[error("{level} accounts may not deploy clusters; ask an admin for a higher level")]
    LevelMayNotDeploy { level: Level },
    #[error("{level} accounts may deploy at most {max} nodes, asked for {asked}")]
    NodeLimit { level: Level, max: u32, asked: u32 },
    #[error(
        "{level} accounts may set a time_to_live of at most {}, asked for {}",
        crate::cluster::human_secs(*.max as i64),
        crate::cluster::human_secs(*.asked as i64)
    )]
    TtlLimit { level: Level, max: u64, asked: u64 },
    #[error("only admins may do this")]
    AdminOnly,
    #[error("pool {pool} does not let cluster owners run commands on its nodes; ask an admin (who may), or for allow_exec = true on the pool")]
    ExecNotAllowed { pool: PoolName },
    #[error("pool {pool} does not let clusters bring their own workload; deploy without one, or in a pool with allow_workload = true")]
    WorkloadNotAllowed { pool: PoolName },
    #[error("only admins{} may change pool {pool}", if owners.is_empty() { String::new() } else { format!(" and its owners ({owners})") })]
    PoolNotOwned { pool: PoolName, owners: String },
    #[error("only admins may change {fields} of pool {pool}; its owners may change {}", POOL_FIELDS_FOR_OWNERS.join(", "))]
    PoolFieldsAdminOnly { pool: PoolName, fields: String },
    #[error("{level} accounts may not run jobs; ask an admin for a higher level")]
    LevelMayNotRunJobs { level: Level },
    #[error("you are not a member of organisation {org}; charge the job to an organisation you belong to, or to none")]
    JobOrgNotMember { org: String },
    #[error("job {job} is {submitted_by}'s; only its submitter, {}and admins may {what} it", if *.org_owners { "its organisation's owners " } else { "its organisation's members " })]
    JobNotYours {
        job: u64,
        submitted_by: String,
        what: &'static str,
        /// Whether an organisation's owners (not all its members) may.
        org_owners: bool,
    },
    #[error("this is not the token of a job attempt under way; an attempt's agent presents the token its instance was started with")]
    NotThisAttempt,
    #[error("pool {pool} runs no one's scripts but admins' (allow_workload is not set: on the local driver a script runs as the server's own user); name a pool that allows them, or ask an admin")]
    JobsNotAllowed { pool: PoolName },
}

/// The fields of a pool its owners may change; the others (its driver and
/// instance type, what its nodes run, what its clusters' owners may do, its
/// price, its owners, its driver's section) reach beyond the pool or
/// replace its clusters' nodes, so only admins change them.
pub const POOL_FIELDS_FOR_OWNERS: [&str; 4] = ["description", "tags", "image", "ssh_user"];

/// Refused unless the caller may change `fields` of pool `pool` (it may
/// change the pool at all: see [`authorize_pool_write`]): admins any, its
/// owners only [`POOL_FIELDS_FOR_OWNERS`].
pub fn authorize_pool_fields(
    caller: &Caller,
    pool: &PoolName,
    fields: &[String],
) -> Result<(), Denied> {
    if caller.is_admin() {
        return Ok(());
    }
    let refused: Vec<&str> = fields
        .iter()
        .map(String::as_str)
        .filter(|f| !POOL_FIELDS_FOR_OWNERS.contains(f))
        .collect();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(Denied::PoolFieldsAdminOnly {
            pool: pool.clone(),
            fields: refused.join(", "),
        })
    }
}

impl Denied {
    /// The stable error code the API returns.
    pub fn code(&self) -> &'static str {
        match self {
            Denied::NotAuthenticated => "not_authenticated",
            Denied::PublicNeedsAdmin => "public_cluster_needs_admin",
            Denied::ClusterNotAllowed { .. } => "cluster_not_allowed",
            Denied::LevelMayNotDeploy { .. } => "level_may_not_deploy",
            Denied::NodeLimit { .. } => "node_limit_exceeded",
            Denied::TtlLimit { .. } => "ttl_limit_exceeded",
            Denied::AdminOnly => "admin_only",
            Denied::ExecNotAllowed { .. } => "exec_not_allowed",
            Denied::WorkloadNotAllowed { .. } => "workload_not_allowed",
            Denied::PoolNotOwned { .. } => "pool_not_owned",
            Denied::PoolFieldsAdminOnly { .. } => "pool_field_admin_only",
            Denied::LevelMayNotRunJobs { .. } => "level_may_not_run_jobs",
            Denied::JobOrgNotMember { .. } => "job_org_not_member",
            Denied::JobNotYours { .. } => "job_not_yours",
            Denied::NotThisAttempt => "attempt_token_invalid",
            Denied::JobsNotAllowed { .. } => "jobs_not_allowed",
        }
    }
}

fn signed_in(caller: &Caller) -> Result<(), Denied> {
    if caller.account.is_none() && !caller.is_admin() {
        return Err(Denied::NotAuthenticated);
    }
    Ok(())
}

fn own_cluster(caller: &Caller, cluster: &ClusterName) -> Result<(), Denied> {
    if caller.may_act_on(cluster) {
        return Ok(());
    }
    let allowed = if caller.allowed.is_empty() {
        "you have none".to_owned()
    } else {
        caller
            .allowed
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(Denied::ClusterNotAllowed {
        cluster: cluster.clone(),
        allowed,
    })
}

/// DEPLOY, in seed 000's order: signed in; not public unless admin; one of
/// the caller's clusters; node capacity and time-to-live within the level.
pub fn authorize_deploy(
    caller: &Caller,
    policy: &LevelPolicy,
    cluster: &ClusterName,
    is_public: bool,
    node_capacity: u32,
    time_to_live: Duration,
) -> Result<(), Denied> {
    signed_in(caller)?;
    if caller.is_admin() {
        return Ok(());
    }
    if is_public {
        return Err(Denied::PublicNeedsAdmin);
    }
    own_cluster(caller, cluster)?;
    let Some(limits) = policy.limits(caller.level) else {
        return Err(Denied::NotAuthenticated);
    };
    if limits.max_nodes == 0 {
        return Err(Denied::LevelMayNotDeploy {
            level: caller.level,
        });
    }
    if node_capacity > limits.max_nodes {
        return Err(Denied::NodeLimit {
            level: caller.level,
            max: limits.max_nodes,
            asked: node_capacity,
        });
    }
    if time_to_live > limits.max_ttl {
        return Err(Denied::TtlLimit {
            level: caller.level,
            max: limits.max_ttl.as_secs(),
            asked: time_to_live.as_secs(),
        });
    }
    Ok(())
}

/// DESTROY: one of the caller's clusters (public or not).
pub fn authorize_destroy(caller: &Caller, cluster: &ClusterName) -> Result<(), Denied> {
    signed_in(caller)?;
    own_cluster(caller, cluster)
}

/// STATUS: anyone may read a public cluster; otherwise it must be one of
/// the caller's clusters. A cluster that is not deployed is not public, so
/// the answer does not reveal whether a private cluster exists.
pub fn authorize_status(
    caller: &Caller,
    cluster: &ClusterName,
    is_public: bool,
) -> Result<(), Denied> {
    if is_public {
        return Ok(());
    }
    signed_in(caller)?;
    own_cluster(caller, cluster)
}

/// EXEC: a command on a node of one of the caller's clusters, where its
/// pool allows that; admins on any node.
pub fn authorize_exec(
    caller: &Caller,
    cluster: &ClusterName,
    pool: &PoolName,
    pool_allows: bool,
) -> Result<(), Denied> {
    signed_in(caller)?;
    if caller.is_admin() {
        return Ok(());
    }
    own_cluster(caller, cluster)?;
    if !pool_allows {
        return Err(Denied::ExecNotAllowed { pool: pool.clone() });
    }
    Ok(())
}

/// A cluster's own workload (on top of DEPLOY's rules): only where its
/// pool allows that, admins included, since only such a pool's driver
/// runs workloads and its operator chose to let clusters bring one.
pub fn authorize_workload(
    caller: &Caller,
    pool: &PoolName,
    pool_allows: bool,
) -> Result<(), Denied> {
    signed_in(caller)?;
    if pool_allows {
        Ok(())
    } else {
        Err(Denied::WorkloadNotAllowed { pool: pool.clone() })
    }
}

/// A cluster access token: for the caller's own clusters.
pub fn authorize_cluster_token(caller: &Caller, cluster: &ClusterName) -> Result<(), Denied> {
    signed_in(caller)?;
    own_cluster(caller, cluster)
}

/// Account management and grants.
pub fn authorize_admin(caller: &Caller) -> Result<(), Denied> {
    signed_in(caller)?;
    if caller.is_admin() {
        Ok(())
    } else {
        Err(Denied::AdminOnly)
    }
}

/// Whether the caller may submit a job (charged to an organisation whose
/// membership `org_role` gives, if it names one): signed in, at a level
/// that may deploy (at least one node); a member of the organisation.
pub fn authorize_job_submit(
    caller: &Caller,
    policy: &LevelPolicy,
    org: Option<(&str, Option<crate::org::OrgRole>)>,
) -> Result<(), Denied> {
    signed_in(caller)?;
    if caller.is_admin() {
        return Ok(());
    }
    // A job takes an instance, as a deploy does: a level that may not
    // deploy (no limits, or 0 nodes) may not run jobs either.
    if policy.limits(caller.level).is_none_or(|l| l.max_nodes == 0) {
        return Err(Denied::LevelMayNotRunJobs {
            level: caller.level,
        });
    }
    match org {
        Some((org, None)) => Err(Denied::JobOrgNotMember {
            org: org.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Whether the caller's job may run on `pool` (which allows scripts of
/// its users where `pool_allows`, its `allow_workload`): admins' on any.
pub fn authorize_job_pool(
    caller: &Caller,
    pool: &PoolName,
    pool_allows: bool,
) -> Result<(), Denied> {
    signed_in(caller)?;
    if caller.is_admin() || pool_allows {
        Ok(())
    } else {
        Err(Denied::JobsNotAllowed { pool: pool.clone() })
    }
}

/// Whether the caller may read job `job` (`what` = "read") or cancel it
/// ("cancel"): its submitter and admins may; of the organisation it is
/// charged to (`org_role`: the caller's role there), any member reads it
/// and owners cancel it.
pub fn authorize_job(
    caller: &Caller,
    job: u64,
    submitted_by: &str,
    org_role: Option<crate::org::OrgRole>,
    what: &'static str,
) -> Result<(), Denied> {
    signed_in(caller)?;
    let cancel = what != "read";
    let own = caller
        .account
        .as_ref()
        .is_some_and(|a| a.as_str() == submitted_by);
    let org_may = match org_role {
        Some(crate::org::OrgRole::Owner) => true,
        Some(_) => !cancel,
        None => false,
    };
    if caller.is_admin() || own || org_may {
        Ok(())
    } else {
        Err(Denied::JobNotYours {
            job,
            submitted_by: submitted_by.to_owned(),
            what,
            org_owners: cancel,
        })
    }
}

/// Whether the caller may change or retire pool `pool`, whose owners are
/// `owners` (none: a pool being created): admins may; so may an account it
/// names, and an owner of an organisation it names (`org_role` says what
/// role the caller has in an organisation).
pub fn authorize_pool_write(
    caller: &Caller,
    pool: &PoolName,
    owners: &[crate::pool::PoolOwner],
    org_role: impl Fn(&crate::org::OrgName, &Username) -> Option<crate::org::OrgRole>,
) -> Result<(), Denied> {
    use crate::pool::PoolOwner;
    signed_in(caller)?;
    if caller.is_admin() {
        return Ok(());
    }
    let owns = caller.account.as_ref().is_some_and(|me| {
        owners.iter().any(|o| match o {
            PoolOwner::Account(a) => a == me,
            PoolOwner::Org(org) => org_role(org, me) == Some(crate::org::OrgRole::Owner),
        })
    });
    if owns {
        Ok(())
    } else {
        Err(Denied::PoolNotOwned {
            pool: pool.clone(),
            owners: owners
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_levels_keep_on_failure_bounds_the_servers() {
        let server = crate::JobDefaults {
            max_keep_on_failure: Duration::from_secs(3600),
            ..crate::JobDefaults::default()
        };
        let mut policy = LevelPolicy::default();
        policy.org_member.max_keep_on_failure = Some(Duration::from_secs(600));
        let keep =
            |policy: &LevelPolicy, level| policy.job_defaults(level, &server).max_keep_on_failure;
        assert_eq!(keep(&policy, Level::OrgMember), Duration::from_secs(600));
        assert_eq!(keep(&policy, Level::Admin), Duration::from_secs(3600));
        assert_eq!(
            keep(&policy, Level::GithubMember),
            Duration::from_secs(3600)
        );
        policy.org_member.max_keep_on_failure = Some(Duration::from_secs(7200));
        assert_eq!(
            keep(&policy, Level::OrgMember),
            Duration::from_secs(3600),
            "never longer than the server's"
        );
        let document: crate::JobDocument = serde_json::from_value(serde_json::json!({
            "name": "debug", "script": "false", "max_runtime": "5m", "keep_on_failure": "30m",
        }))
        .unwrap();
        policy.org_member.max_keep_on_failure = Some(Duration::from_secs(600));
        let refused = document
            .spec(&policy.job_defaults(Level::OrgMember, &server))
            .unwrap_err();
        assert_eq!(refused[0].pointer, "/keep_on_failure");
        assert!(document
            .spec(&policy.job_defaults(Level::Admin, &server))
            .is_ok());
    }

    use super::*;

    #[test]
    fn jobs_are_run_by_levels_that_deploy_and_read_by_their_people() {
        use crate::org::OrgRole;
        let policy = LevelPolicy::default();
        let as_level = |level| Caller::signed_in(Username::new("ann").unwrap(), level);
        let member = as_level(Level::OrgMember);
        assert!(authorize_job_submit(&member, &policy, None).is_ok());
        assert!(
            authorize_job_submit(&member, &policy, Some(("lab", Some(OrgRole::Member)))).is_ok()
        );
        let e = authorize_job_submit(&member, &policy, Some(("lab", None))).unwrap_err();
        assert_eq!(e.code(), "job_org_not_member");
        let e = authorize_job_submit(&as_level(Level::GithubMember), &policy, None).unwrap_err();
        assert_eq!(e.code(), "level_may_not_run_jobs", "no nodes, no jobs");
        let e = authorize_job_submit(&Caller::anonymous(), &policy, None).unwrap_err();
        assert_eq!(e.code(), "not_authenticated");

        let bob = Caller::signed_in(Username::new("bob").unwrap(), Level::OrgMember);
        assert!(
            authorize_job(&member, 1, "ann", None, "cancel").is_ok(),
            "its submitter"
        );
        assert!(authorize_job(&bob, 1, "ann", Some(OrgRole::Member), "read").is_ok());
        let e = authorize_job(&bob, 1, "ann", Some(OrgRole::Member), "cancel").unwrap_err();
        assert_eq!(e.code(), "job_not_yours", "members read, owners cancel");
        assert!(authorize_job(&bob, 1, "ann", Some(OrgRole::Owner), "cancel").is_ok());
        assert!(authorize_job(&bob, 1, "ann", None, "read").is_err());
        assert!(authorize_job(&Caller::local_operator(), 1, "ann", None, "cancel").is_ok());
    }

    #[test]
    fn a_pool_is_changed_by_admins_its_accounts_and_its_orgs_owners() {
        use crate::org::{OrgName, OrgRole};
        use crate::pool::PoolOwner;
        let pool = PoolName::new("gpu").unwrap();
        let user = |n: &str| Username::new(n).unwrap();
        let owners = [
            PoolOwner::Account(user("ann")),
            PoolOwner::Org(OrgName::new("lab").unwrap()),
        ];
        let role = |_: &OrgName, u: &Username| match u.as_str() {
            "olga" => Some(OrgRole::Owner),
            "mo" => Some(OrgRole::Member),
            _ => None,
        };
        let caller = |n: &str| Caller::signed_in(user(n), Level::OrgMember);
        assert!(authorize_pool_write(&caller("ann"), &pool, &owners, role).is_ok());
        assert!(authorize_pool_write(&caller("olga"), &pool, &owners, role).is_ok());
        let e = authorize_pool_write(&caller("mo"), &pool, &owners, role).unwrap_err();
        assert_eq!(e.code(), "pool_not_owned");
        assert!(e.to_string().contains("ann, org:lab"), "{e}");
        // A new pool has no owners yet: admins only.
        assert!(authorize_pool_write(&caller("ann"), &pool, &[], role).is_err());
        let admin = Caller::signed_in(user("root"), Level::Admin);
        assert!(authorize_pool_write(&admin, &pool, &[], role).is_ok());
        assert_eq!(
            authorize_pool_write(&Caller::anonymous(), &pool, &owners, role)
                .unwrap_err()
                .code(),
            "not_authenticated"
        );
    }

    fn cluster(s: &str) -> ClusterName {
        ClusterName::new(s).unwrap()
    }

    fn user(name: &str, level: Level) -> Caller {
        let username = Username::new(name).unwrap();
        Caller {
            allowed: allowed_clusters(&username, &BTreeSet::new()),
            account: Some(username),
            level,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn exec_is_for_owners_where_the_pool_allows_it_and_for_admins() {
        let pool = PoolName::new("p").unwrap();
        let alice = user("alice", Level::OrgMember);
        assert_eq!(
            authorize_exec(&alice, &cluster("alice"), &pool, true),
            Ok(())
        );
        assert_eq!(
            authorize_exec(&alice, &cluster("alice"), &pool, false)
                .unwrap_err()
                .code(),
            "exec_not_allowed"
        );
        // Another's cluster: refused as not hers, whatever the pool says.
        assert_eq!(
            authorize_exec(&alice, &cluster("bob"), &pool, false)
                .unwrap_err()
                .code(),
            "cluster_not_allowed"
        );
        let admin = user("root", Level::Admin);
        assert_eq!(authorize_workload(&alice, &pool, true), Ok(()));
        assert_eq!(
            authorize_workload(&admin, &pool, false).unwrap_err().code(),
            "workload_not_allowed",
            "not even admins: the pool's driver may run no workloads"
        );
        assert_eq!(
            authorize_exec(&admin, &cluster("bob"), &pool, false),
            Ok(())
        );
        assert_eq!(
            authorize_exec(&Caller::anonymous(), &cluster("bob"), &pool, true)
                .unwrap_err()
                .code(),
            "not_authenticated"
        );
    }

    #[test]
    fn deploy_rules_in_seed_order() {
        let p = LevelPolicy::default();
        let alice = user("alice", Level::OrgMember);
        let own = cluster("alice");
        assert_eq!(
            authorize_deploy(&alice, &p, &own, false, 10, 12 * HOUR),
            Ok(())
        );
        assert_eq!(
            authorize_deploy(&alice, &p, &own, true, 1, HOUR),
            Err(Denied::PublicNeedsAdmin)
        );
        assert_eq!(
            authorize_deploy(&alice, &p, &cluster("bob"), false, 1, HOUR)
                .unwrap_err()
                .code(),
            "cluster_not_allowed"
        );
        assert_eq!(
            authorize_deploy(&alice, &p, &own, false, 11, HOUR),
            Err(Denied::NodeLimit {
                level: Level::OrgMember,
                max: 10,
                asked: 11
            })
        );
        assert_eq!(
            authorize_deploy(&alice, &p, &own, false, 1, 13 * HOUR)
                .unwrap_err()
                .code(),
            "ttl_limit_exceeded"
        );
        let gh = user("gh", Level::GithubMember);
        assert_eq!(
            authorize_deploy(&gh, &p, &cluster("gh"), false, 1, HOUR),
            Err(Denied::LevelMayNotDeploy {
                level: Level::GithubMember
            })
        );
        assert_eq!(
            authorize_deploy(&Caller::anonymous(), &p, &own, false, 1, HOUR),
            Err(Denied::NotAuthenticated)
        );
        let admin = user("root", Level::Admin);
        assert_eq!(
            authorize_deploy(&admin, &p, &own, true, 1000, 1000 * HOUR),
            Ok(())
        );
    }

    #[test]
    fn status_of_public_clusters_is_open_private_ones_are_not() {
        let own = cluster("alice");
        assert_eq!(authorize_status(&Caller::anonymous(), &own, true), Ok(()));
        assert_eq!(
            authorize_status(&Caller::anonymous(), &own, false),
            Err(Denied::NotAuthenticated)
        );
        let bob = user("bob", Level::OrgMember);
        assert_eq!(authorize_status(&bob, &own, true), Ok(()));
        assert_eq!(
            authorize_status(&bob, &own, false).unwrap_err().code(),
            "cluster_not_allowed"
        );
        assert_eq!(
            authorize_status(&user("alice", Level::GithubMember), &own, false),
            Ok(())
        );
    }

    #[test]
    fn grants_extend_the_allowed_clusters() {
        let username = Username::new("carol").unwrap();
        let caller = Caller {
            allowed: allowed_clusters(&username, &BTreeSet::from([cluster("shared")])),
            account: Some(username),
            level: Level::OrgMember,
        };
        assert_eq!(authorize_destroy(&caller, &cluster("shared")), Ok(()));
        assert_eq!(authorize_destroy(&caller, &cluster("carol")), Ok(()));
        assert!(authorize_destroy(&caller, &cluster("other")).is_err());
    }

    #[test]
    fn admin_rules() {
        assert_eq!(
            authorize_admin(&Caller::anonymous()),
            Err(Denied::NotAuthenticated)
        );
        assert_eq!(
            authorize_admin(&user("a", Level::OrgMember)),
            Err(Denied::AdminOnly)
        );
        assert_eq!(authorize_admin(&user("a", Level::Admin)), Ok(()));
        assert_eq!(authorize_admin(&Caller::local_operator()), Ok(()));
    }

    #[test]
    fn levels_parse_and_print() {
        for level in Level::ALL {
            assert_eq!(level.as_str().parse::<Level>(), Ok(level));
        }
        assert!("root".parse::<Level>().is_err());
    }
}
