//! The change feed's vocabulary: what happened to which record. Every
//! change the store commits is recorded with one of these, in the same
//! transaction, so a reader of the feed (the engine's reflector, the events
//! API, notifications later) misses nothing and sees nothing that was
//! rolled back.

use chrono::{DateTime, Utc};

use crate::access::{authorize_status, Caller};
use crate::cluster::ClusterRecord;
use crate::names::ClusterName;
use crate::obstacle::{Obstacle, ObstacleCode};
use crate::org::{OrgEvent, OrgEventKind, Organisation};
use crate::plan::{NodeRecord, NodeState};

/// What happened. Stored by name (`entity.verb`, [`Self::as_str`]) and
/// checked when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A cluster record was created, or revived while being destroyed.
    ClusterDeployed,
    /// A deploy changed a running cluster's node count.
    ClusterResized,
    /// A deploy left the node count and only moved the deadline.
    ClusterExtended,
    /// DESTROY (or an organisation's shutdown) marked it destroying.
    ClusterDestroyed,
    /// Its time-to-live ran out: destroying, as by DESTROY.
    ClusterExpired,
    /// Its last node is gone and its record with it.
    ClusterForgotten,
    /// The nodes the leader observes changed: one was created, became
    /// ready or unhealthy, is shutting down or went.
    ClusterNodes,
    /// Something stands in the cluster's way, or what does changed (the
    /// leader met it again, or met another): see [`Obstacle`].
    ClusterError,
    /// Nothing stands in its way any more.
    ClusterErrorCleared,
    /// Something an organisation's owners should hear about.
    Org(OrgEventKind),
    AccountCreated,
    /// Level or grants changed.
    AccountChanged,
    AccountDeleted,
    /// A server took the leader's lease: a new term began.
    LeaseTaken,
    /// A token signing key was added (the first, or by rotation) or
    /// retired; the key is the key's id.
    KeysChanged,
    /// A pool was written through the API (created or changed): a new
    /// version of it.
    PoolApplied,
    /// A pool was retired: no cluster may use it any more.
    PoolRetired,
    /// A pool's rollout was paused: its clusters keep their outdated
    /// nodes until it is resumed.
    PoolRolloutPaused,
    /// A pool's rollout was resumed (after a pause or a stop).
    PoolRolloutResumed,
    /// The leader stopped a pool's rollout: replacements kept failing.
    PoolRolloutStopped,
    /// A shared config was created (its version 1).
    SharedConfigCreated,
    /// A shared config has a new version.
    SharedConfigUpdated,
    /// A job was queued.
    JobSubmitted,
    /// Why a queued job waits changed.
    JobWaiting,
    /// A job's attempt started: its instance is being made.
    JobStarted,
    /// A job's attempt's script started.
    JobRunning,
    /// A job's attempt ended and the job is queued again.
    JobAttemptEnded,
    /// A job ended: succeeded, failed, cancelled or timed out.
    JobEnded,
    /// A job's cancel was asked for while an attempt was under way.
    JobCancelAsked,
    ScheduleCreated,
    /// Paused or resumed.
    ScheduleChanged,
    /// Its time came: it queued a job, or says why not.
    ScheduleFired,
    ScheduleDeleted,
    /// A drop-box trigger was refused: the key is the folder's account.
    DropboxRefused,
    /// A subscription was disabled after its deliveries kept failing: the
    /// key is its account.
    NotificationDisabled,
}

/// Which kind of record a change is about: the feed's key is its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeEntity {
    Cluster,
    Org,
    Account,
    /// The servers themselves: the key is a server's name.
    Server,
    /// A pool written through the API: the key is its name.
    Pool,
    /// A shared config: the key is its name.
    SharedConfig,
    /// A job: the key is its number.
    Job,
    /// A schedule: the key is its name.
    Schedule,
    /// A drop-box folder: the key is its account.
    Dropbox,
    /// An account's subscriptions: the key is the account.
    Notification,
}

impl ChangeEntity {
    pub const ALL: [ChangeEntity; 10] = [
        ChangeEntity::Cluster,
        ChangeEntity::Org,
        ChangeEntity::Account,
        ChangeEntity::Server,
        ChangeEntity::Pool,
        ChangeEntity::SharedConfig,
        ChangeEntity::Job,
        ChangeEntity::Schedule,
        ChangeEntity::Dropbox,
        ChangeEntity::Notification,
    ];

    /// What the stored names of its changes begin with, before the dot.
    pub fn prefix(self) -> &'static str {
        match self {
            ChangeEntity::Cluster => "cluster",
            ChangeEntity::Org => "org",
            ChangeEntity::Account => "account",
            ChangeEntity::Server => "server",
            ChangeEntity::Pool => "pool",
            ChangeEntity::SharedConfig => "shared_config",
            ChangeEntity::Job => "job",
            ChangeEntity::Schedule => "schedule",
            ChangeEntity::Dropbox => "dropbox",
            ChangeEntity::Notification => "notification",
        }
    }
}

impl ChangeKind {
    const PLAIN: [ChangeKind; 34] = [
        ChangeKind::ClusterDeployed,
        ChangeKind::ClusterResized,
        ChangeKind::ClusterExtended,
        ChangeKind::ClusterDestroyed,
        ChangeKind::ClusterExpired,
        ChangeKind::ClusterForgotten,
        ChangeKind::ClusterNodes,
        ChangeKind::ClusterError,
        ChangeKind::ClusterErrorCleared,
        ChangeKind::AccountCreated,
        ChangeKind::AccountChanged,
        ChangeKind::AccountDeleted,
        ChangeKind::LeaseTaken,
        ChangeKind::KeysChanged,
        ChangeKind::PoolApplied,
        ChangeKind::PoolRetired,
        ChangeKind::PoolRolloutPaused,
        ChangeKind::PoolRolloutResumed,
        ChangeKind::PoolRolloutStopped,
        ChangeKind::SharedConfigCreated,
        ChangeKind::SharedConfigUpdated,
        ChangeKind::JobSubmitted,
        ChangeKind::JobWaiting,
        ChangeKind::JobStarted,
        ChangeKind::JobRunning,
        ChangeKind::JobAttemptEnded,
        ChangeKind::JobEnded,
        ChangeKind::JobCancelAsked,
        ChangeKind::ScheduleCreated,
        ChangeKind::ScheduleChanged,
        ChangeKind::ScheduleFired,
        ChangeKind::ScheduleDeleted,
        ChangeKind::DropboxRefused,
        ChangeKind::NotificationDisabled,
    ];

    pub fn entity(self) -> ChangeEntity {
        match self {
            ChangeKind::ClusterDeployed
            | ChangeKind::ClusterResized
            | ChangeKind::ClusterExtended
            | ChangeKind::ClusterDestroyed
            | ChangeKind::ClusterExpired
            | ChangeKind::ClusterForgotten
            | ChangeKind::ClusterNodes
            | ChangeKind::ClusterError
            | ChangeKind::ClusterErrorCleared => ChangeEntity::Cluster,
            ChangeKind::Org(_) => ChangeEntity::Org,
            ChangeKind::AccountCreated
            | ChangeKind::AccountChanged
            | ChangeKind::AccountDeleted => ChangeEntity::Account,
            ChangeKind::LeaseTaken | ChangeKind::KeysChanged => ChangeEntity::Server,
            ChangeKind::PoolApplied
            | ChangeKind::PoolRetired
            | ChangeKind::PoolRolloutPaused
            | ChangeKind::PoolRolloutResumed
            | ChangeKind::PoolRolloutStopped => ChangeEntity::Pool,
            ChangeKind::SharedConfigCreated | ChangeKind::SharedConfigUpdated => {
                ChangeEntity::SharedConfig
            }
            ChangeKind::JobSubmitted
            | ChangeKind::JobWaiting
            | ChangeKind::JobStarted
            | ChangeKind::JobRunning
            | ChangeKind::JobAttemptEnded
            | ChangeKind::JobEnded
            | ChangeKind::JobCancelAsked => ChangeEntity::Job,
            ChangeKind::ScheduleCreated
            | ChangeKind::ScheduleChanged
            | ChangeKind::ScheduleFired
            | ChangeKind::ScheduleDeleted => ChangeEntity::Schedule,
            ChangeKind::DropboxRefused => ChangeEntity::Dropbox,
            ChangeKind::NotificationDisabled => ChangeEntity::Notification,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::ClusterDeployed => "cluster.deployed",
            ChangeKind::ClusterResized => "cluster.resized",
            ChangeKind::ClusterExtended => "cluster.extended",
            ChangeKind::ClusterDestroyed => "cluster.destroyed",
            ChangeKind::ClusterExpired => "cluster.expired",
            ChangeKind::ClusterForgotten => "cluster.forgotten",
            ChangeKind::ClusterNodes => "cluster.nodes",
            ChangeKind::ClusterError => "cluster.error",
            ChangeKind::ClusterErrorCleared => "cluster.error_cleared",
            ChangeKind::Org(kind) => match kind {
                OrgEventKind::Created => "org.created",
                OrgEventKind::MembershipRequested => "org.membership_requested",
                OrgEventKind::MemberAdded => "org.member_added",
                OrgEventKind::MembershipRefused => "org.membership_refused",
                OrgEventKind::MemberRemoved => "org.member_removed",
                OrgEventKind::RoleChanged => "org.role_changed",
                OrgEventKind::SettingsChanged => "org.settings_changed",
                OrgEventKind::Woke => "org.woke",
                OrgEventKind::Stopped => "org.stopped",
                OrgEventKind::BudgetExhausted => "org.budget_exhausted",
                OrgEventKind::BudgetRestored => "org.budget_restored",
                OrgEventKind::BudgetLow => "org.budget_low",
                OrgEventKind::CapacityRequested => "org.capacity_requested",
                OrgEventKind::CapacityWithdrawn => "org.capacity_withdrawn",
                OrgEventKind::Credited => "org.credited",
            },
            ChangeKind::AccountCreated => "account.created",
            ChangeKind::AccountChanged => "account.changed",
            ChangeKind::AccountDeleted => "account.deleted",
            ChangeKind::LeaseTaken => "server.lease_taken",
            ChangeKind::KeysChanged => "server.keys_changed",
            ChangeKind::PoolApplied => "pool.applied",
            ChangeKind::PoolRetired => "pool.retired",
            ChangeKind::PoolRolloutPaused => "pool.rollout_paused",
            ChangeKind::PoolRolloutResumed => "pool.rollout_resumed",
            ChangeKind::PoolRolloutStopped => "pool.rollout_stopped",
            ChangeKind::SharedConfigCreated => "shared_config.created",
            ChangeKind::SharedConfigUpdated => "shared_config.updated",
            ChangeKind::JobSubmitted => "job.submitted",
            ChangeKind::JobWaiting => "job.waiting",
            ChangeKind::JobStarted => "job.started",
            ChangeKind::JobRunning => "job.running",
            ChangeKind::JobAttemptEnded => "job.attempt_ended",
            ChangeKind::JobEnded => "job.ended",
            ChangeKind::JobCancelAsked => "job.cancel_asked",
            ChangeKind::ScheduleCreated => "schedule.created",
            ChangeKind::ScheduleChanged => "schedule.changed",
            ChangeKind::ScheduleFired => "schedule.fired",
            ChangeKind::ScheduleDeleted => "schedule.deleted",
            ChangeKind::DropboxRefused => "dropbox.refused",
            ChangeKind::NotificationDisabled => "notification.disabled",
        }
    }

    pub fn parse(s: &str) -> Option<ChangeKind> {
        Self::PLAIN
            .into_iter()
            .chain(OrgEventKind::ALL.into_iter().map(ChangeKind::Org))
            .find(|k| k.as_str() == s)
    }

    /// What a deploy did to a cluster whose record was `before` (none: a
    /// new cluster) and is now `after`.
    pub fn of_deploy(before: Option<&ClusterRecord>, after: &ClusterRecord) -> ChangeKind {
        match before {
            None => ChangeKind::ClusterDeployed,
            Some(b) if b.destroying => ChangeKind::ClusterDeployed,
            Some(b) if b.node_capacity != after.node_capacity => ChangeKind::ClusterResized,
            Some(_) => ChangeKind::ClusterExtended,
        }
    }

    /// What a change that left a cluster's record as `after` did, for the
    /// changes an organisation makes to its cluster.
    pub fn of_record(before: Option<&ClusterRecord>, after: &ClusterRecord) -> ChangeKind {
        if after.destroying {
            ChangeKind::ClusterDestroyed
        } else {
            Self::of_deploy(before, after)
        }
    }
}

impl std::fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of the change feed as written: its number and time are the
/// store's.
#[derive(Debug, Clone, PartialEq)]
pub struct NewChange {
    pub kind: ChangeKind,
    /// The name of the record (cluster, organisation or account).
    pub key: String,
    /// Details for readers: a JSON object.
    pub payload: serde_json::Value,
}

/// One entry of the change feed as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Increases with every commit; a reader resumes after the last it saw.
    pub seq: i64,
    pub kind: ChangeKind,
    pub key: String,
    pub at: DateTime<Utc>,
    pub payload: serde_json::Value,
}

impl Change {
    /// What a `cluster.error` change says stands in the cluster's way.
    pub fn obstacle(&self) -> Option<Obstacle> {
        if self.kind != ChangeKind::ClusterError {
            return None;
        }
        let p = &self.payload;
        let time = |field: &str| -> Option<DateTime<Utc>> {
            serde_json::from_value(p.get(field)?.clone()).ok()
        };
        Some(Obstacle {
            code: ObstacleCode::parse(p.get("code")?.as_str()?)?,
            message: p.get("message")?.as_str()?.to_owned(),
            since: time("since")?,
            last_at: time("last_at")?,
            count: u32::try_from(p.get("count")?.as_u64()?).ok()?,
            retry_at: time("retry_at"),
        })
    }

    /// The cluster's record as this change left it, for the changes of a
    /// cluster's desired state (deployed, resized, extended, destroyed,
    /// expired): the feed carries the whole record, so a reader need not
    /// read it back. None for other changes, and for a change written
    /// before its payload carried every field.
    pub fn cluster_record(&self) -> Option<ClusterRecord> {
        use crate::cluster::NodeCapacity;
        use crate::names::PoolName;
        if !matches!(
            self.kind,
            ChangeKind::ClusterDeployed
                | ChangeKind::ClusterResized
                | ChangeKind::ClusterExtended
                | ChangeKind::ClusterDestroyed
                | ChangeKind::ClusterExpired
        ) {
            return None;
        }
        let p = &self.payload;
        let time = |field: &str| -> Option<DateTime<Utc>> {
            serde_json::from_value(p.get(field)?.clone()).ok()
        };
        Some(ClusterRecord {
            name: ClusterName::new(self.key.as_str()).ok()?,
            is_public: p.get("is_public")?.as_bool()?,
            node_capacity: NodeCapacity::from_stored(
                u32::try_from(p.get("nodes")?.as_u64()?).ok()?,
            ),
            pool: PoolName::new(p.get("pool")?.as_str()?).ok()?,
            workload: match p.get("workload") {
                None | Some(serde_json::Value::Null) => None,
                Some(w) => Some(serde_json::from_value(w.clone()).ok()?),
            },
            expires_at: match p.get("expires_at")? {
                serde_json::Value::Null => None,
                _ => Some(time("expires_at")?),
            },
            destroying: p.get("destroying")?.as_bool()?,
            created_at: time("created_at")?,
            updated_at: time("updated_at")?,
            generation: p.get("generation")?.as_i64()?,
        })
    }

    /// The organisation's event this change records, if it is one.
    pub fn org_event(&self) -> Option<OrgEvent> {
        match self.kind {
            ChangeKind::Org(kind) => Some(OrgEvent {
                at: self.at,
                kind,
                message: self.payload["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            }),
            _ => None,
        }
    }
}

impl NewChange {
    /// A change of a cluster's record, with the record's desired state.
    pub fn cluster(kind: ChangeKind, record: &ClusterRecord) -> NewChange {
        let mut payload = serde_json::json!({
            "nodes": record.node_capacity.get(),
            "pool": record.pool.as_str(),
            "is_public": record.is_public,
            "expires_at": record.expires_at,
            "generation": record.generation,
            "destroying": record.destroying,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
        });
        if let Some(w) = &record.workload {
            payload["workload"] = serde_json::to_value(w).expect("a workload serialises");
        }
        NewChange {
            kind,
            key: record.name.to_string(),
            payload,
        }
    }

    /// The nodes of a cluster as the leader now observes them. `is_public`
    /// is the cluster's, so the change is as readable as its status.
    pub fn nodes(cluster: &ClusterName, is_public: bool, nodes: &[NodeRecord]) -> NewChange {
        let ready = nodes.iter().filter(|n| n.state == NodeState::Ready).count();
        NewChange {
            kind: ChangeKind::ClusterNodes,
            key: cluster.to_string(),
            payload: serde_json::json!({
                "ready": ready,
                "total": nodes.len(),
                "is_public": is_public,
                "instances": nodes
                    .iter()
                    .map(|n| serde_json::json!({"id": n.id.as_str(), "state": n.state.as_str()}))
                    .collect::<Vec<_>>(),
            }),
        }
    }

    /// What stands in the cluster's way now, or (none) that nothing does.
    pub fn obstacle(
        cluster: &ClusterName,
        is_public: bool,
        obstacle: Option<&Obstacle>,
    ) -> NewChange {
        match obstacle {
            Some(o) => NewChange {
                kind: ChangeKind::ClusterError,
                key: cluster.to_string(),
                payload: serde_json::json!({
                    "is_public": is_public,
                    "code": o.code.as_str(),
                    "message": o.message,
                    "since": o.since,
                    "last_at": o.last_at,
                    "count": o.count,
                    "retry_at": o.retry_at,
                }),
            },
            None => NewChange {
                kind: ChangeKind::ClusterErrorCleared,
                key: cluster.to_string(),
                payload: serde_json::json!({ "is_public": is_public }),
            },
        }
    }

    /// A server began a term as the leader.
    pub fn lease_taken(holder: &str, epoch: i64) -> NewChange {
        NewChange {
            kind: ChangeKind::LeaseTaken,
            key: holder.to_owned(),
            payload: serde_json::json!({ "epoch": epoch }),
        }
    }

    /// A change of a cluster's record that left nothing to describe.
    pub fn cluster_gone(kind: ChangeKind, name: &str) -> NewChange {
        NewChange {
            kind,
            key: name.to_owned(),
            payload: serde_json::json!({}),
        }
    }
}

/// The changes one change of an organisation makes: each of its events,
/// then its cluster's record if the change rewrote it (`before` as it was).
pub fn org_changes(
    org: &str,
    events: &[OrgEvent],
    before: Option<&ClusterRecord>,
    after: Option<&ClusterRecord>,
) -> Vec<NewChange> {
    let mut changes: Vec<NewChange> = events
        .iter()
        .map(|e| NewChange {
            kind: ChangeKind::Org(e.kind),
            key: org.to_owned(),
            payload: serde_json::json!({ "message": e.message }),
        })
        .collect();
    if let Some(after) = after {
        changes.push(NewChange::cluster(
            ChangeKind::of_record(before, after),
            after,
        ));
    }
    changes
}

/// Whether `caller` may read `change`. Admins read everything; a
/// cluster's changes whoever may read its status (anyone while it was
/// public, else its owners and grantees) and, for an organisation's
/// cluster, its members; an organisation's changes its members; an
/// account's changes that account. `org` is the organisation the change
/// concerns, if any.
pub fn may_read_change(caller: &Caller, change: &Change, org: Option<&Organisation>) -> bool {
    if caller.is_admin() {
        return true;
    }
    let member = || org.is_some_and(|o| o.admits(caller));
    match change.kind.entity() {
        ChangeEntity::Cluster => {
            let public = change
                .payload
                .get("is_public")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false);
            let own = ClusterName::new(change.key.as_str())
                .is_ok_and(|name| authorize_status(caller, &name, public).is_ok());
            own || member()
        }
        ChangeEntity::Org => member(),
        ChangeEntity::Account | ChangeEntity::Dropbox | ChangeEntity::Notification => caller
            .account
            .as_ref()
            .is_some_and(|a| a.as_str() == change.key),
        ChangeEntity::Server => false,
        // Pools are listed to everyone; who changed them, to accounts.
        ChangeEntity::Pool | ChangeEntity::SharedConfig => caller.account.is_some(),
        // A job's changes: its submitter, and the members of the
        // organisation it is charged to.
        ChangeEntity::Job => {
            let submitter = change
                .payload
                .get("submitted_by")
                .and_then(serde_json::Value::as_str);
            let own = caller
                .account
                .as_ref()
                .is_some_and(|a| Some(a.as_str()) == submitter);
            own || member()
        }
        // Schedules run admins' templates: admins read them.
        ChangeEntity::Schedule => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_back_from_its_stored_name() {
        let all: Vec<ChangeKind> = ChangeKind::PLAIN
            .into_iter()
            .chain(OrgEventKind::ALL.into_iter().map(ChangeKind::Org))
            .collect();
        let mut names: Vec<&str> = all.iter().map(|k| k.as_str()).collect();
        for k in &all {
            assert_eq!(ChangeKind::parse(k.as_str()), Some(*k));
            let prefix = format!("{}.", k.entity().prefix());
            assert!(k.as_str().starts_with(&prefix), "{k}");
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len(), "stored names are distinct");
        assert_eq!(ChangeKind::parse("cluster.exploded"), None);
    }

    #[test]
    fn a_clusters_change_carries_its_whole_record() {
        let at = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms).unwrap();
        let mut record = ClusterRecord {
            name: ClusterName::new("demo").unwrap(),
            is_public: true,
            node_capacity: crate::NodeCapacity::from_stored(3),
            pool: crate::PoolName::new("big").unwrap(),
            workload: None,
            expires_at: Some(at(1_700_000_003_123)),
            destroying: false,
            created_at: at(1_700_000_000_001),
            updated_at: at(1_700_000_001_002),
            generation: 7,
        };
        let read = |kind, record: &ClusterRecord| {
            let new = NewChange::cluster(kind, record);
            change(new.kind, &new.key, new.payload).cluster_record()
        };
        assert_eq!(
            read(ChangeKind::ClusterResized, &record),
            Some(record.clone())
        );
        record.expires_at = None;
        record.destroying = true;
        record.workload = Some(crate::Workload::new("serve".into(), Some(8000)).unwrap());
        assert_eq!(
            read(ChangeKind::ClusterDestroyed, &record),
            Some(record.clone())
        );
        // Not a change of desired state, or written before the payload
        // carried the whole record: the reader reads the record back.
        assert_eq!(read(ChangeKind::ClusterForgotten, &record), None);
        let mut old = NewChange::cluster(ChangeKind::ClusterDeployed, &record);
        old.payload.as_object_mut().unwrap().remove("created_at");
        assert_eq!(
            change(old.kind, &old.key, old.payload).cluster_record(),
            None
        );
    }

    fn change(kind: ChangeKind, key: &str, payload: serde_json::Value) -> Change {
        Change {
            seq: 1,
            kind,
            key: key.to_owned(),
            at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            payload,
        }
    }

    #[test]
    fn who_may_read_which_change() {
        use crate::access::Level;
        use crate::names::Username;
        let ann = Caller::signed_in(Username::new("ann").unwrap(), Level::OrgMember);
        let admin = Caller::local_operator();
        let anon = Caller::anonymous();
        let private = change(
            ChangeKind::ClusterDeployed,
            "ann",
            serde_json::json!({"is_public": false}),
        );
        let public = change(
            ChangeKind::ClusterDeployed,
            "demo",
            serde_json::json!({"is_public": true}),
        );
        let gone = change(ChangeKind::ClusterForgotten, "demo", serde_json::json!({}));
        let account = change(ChangeKind::AccountChanged, "ann", serde_json::json!({}));
        let org = change(
            ChangeKind::Org(OrgEventKind::Woke),
            "lab",
            serde_json::json!({}),
        );

        assert!(may_read_change(&ann, &private, None), "own cluster");
        assert!(!may_read_change(&anon, &private, None));
        assert!(may_read_change(&anon, &public, None), "public then");
        assert!(!may_read_change(&ann, &gone, None), "not ann's, not public");
        assert!(may_read_change(&ann, &account, None), "own account");
        assert!(!may_read_change(&anon, &account, None));
        assert!(!may_read_change(&ann, &org, None), "not a member");
        for c in [&private, &public, &gone, &account, &org] {
            assert!(may_read_change(&admin, c, None));
        }
    }
}
