//! The store contract suite: what every [`Store`] backend must do, accounts
//! ([`AccountStore`](crate::AccountStore)) included, run against SQLite, the in-memory store and
//! (later) PostgreSQL alike.
//!
//! A backend's test file calls
//! [`store_contract_tests!`](crate::store_contract_tests) with an async
//! function that builds a [`Harness`] around an empty store. Every check
//! starts from that empty store and uses fixed, millisecond-precise times, so
//! records can be compared whole.

use std::any::Any;
use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use flotilla_domain::{
    AccountKind, ChangeKind, ClusterName, ClusterRecord, DeployCommand, Level, Limits,
    NodeCapacity, PoolName, TimeToLive, Username,
};
use tokio::task::JoinSet;

use crate::{AccountRecord, Fence, RefreshTokenRecord, Rotation, Store, StoreError};

#[path = "contract_orgs.rs"]
mod orgs;
pub use orgs::*;
#[path = "contract_feed.rs"]
mod feed;
pub use feed::*;
#[path = "contract_lease.rs"]
mod lease;
pub use lease::*;
#[path = "contract_pools.rs"]
mod pools;
pub use pools::*;
#[path = "contract_jobs.rs"]
mod jobs;
pub use jobs::*;
#[path = "contract_schedules.rs"]
mod schedules;
pub use schedules::*;
#[path = "contract_dropbox.rs"]
mod dropbox;
pub use dropbox::*;
#[path = "contract_notify.rs"]
mod notify;
pub use notify::*;

pub struct Harness {
    /// An empty store.
    pub store: Arc<dyn Store>,
    /// A second store on the same data, as a second server would open it
    /// (its own connections; for the memory store, the same state).
    /// Checks that race "two servers" use one of each.
    pub second: Arc<dyn Store>,
    /// Keeps fixtures (temporary directories, servers) alive.
    pub guard: Box<dyn Any + Send>,
}

/// Generates one `#[tokio::test]` per contract check.
#[macro_export]
macro_rules! store_contract_tests {
    ($harness:path) => {
        $crate::store_contract_tests!(@each $harness,
            deploy_creates_the_record,
            returned_records_equal_stored_ones,
            redeploy_sets_capacity_and_expiry_and_bumps_generation,
            redeploy_with_other_visibility_conflicts_and_changes_nothing,
            redeploy_with_other_pool_conflicts_and_changes_nothing,
            a_deploy_that_names_no_fixed_field_keeps_them,
            a_workload_is_kept_and_fixed_once_deployed,
            extend_moves_only_the_deadline_of_a_deployed_cluster,
            destroy_marks_destroying_and_clears_expiry,
            deploy_after_destroy_revives_the_cluster,
            expire_due_fires_exactly_the_due_clusters_once,
            next_expiry_is_the_earliest_live_deadline,
            forget_needs_destroying_and_the_current_generation,
            list_clusters_returns_all_ordered_by_name,
            instance_set_id_is_stable_per_driver,
            racing_callers_get_the_same_instance_set_id,
            concurrent_deploys_of_many_clusters_all_land,
            concurrent_deploy_and_destroy_leave_a_consistent_record,
            create_account_then_get_and_list_ordered_by_username,
            create_account_with_a_taken_name_is_refused_and_changes_nothing,
            set_level_changes_only_the_level,
            set_grants_replaces_the_grants,
            delete_account_removes_its_grants_and_refresh_tokens,
            create_first_admin_creates_only_while_no_admin_exists,
            concurrent_create_first_admin_creates_exactly_one,
            an_admin_made_by_create_account_counts_as_the_first,
            the_last_admin_can_be_neither_demoted_nor_deleted,
            admins_demoting_each_other_at_once_leave_one,
            upsert_github_account_creates_then_sets_the_level,
            upsert_github_account_keeps_an_admin_admin,
            upsert_github_account_refuses_a_local_accounts_name,
            rotating_a_live_token_replaces_it,
            reusing_a_rotated_token_revokes_its_family,
            expired_unknown_and_revoked_tokens_are_invalid,
            revoke_refresh_family_revokes_the_whole_family,
            revoke_refresh_tokens_revokes_all_and_counts_the_live,
            refresh_tokens_need_an_account_and_a_fresh_id,
            concurrent_rotations_of_one_token_rotate_it_once,
            create_org_then_get_and_list,
            capacity_requests_size_the_cluster_record,
            a_refused_change_changes_nothing,
            accrual_is_exact_split_by_user_and_day_and_matches_the_ledger,
            running_out_shuts_the_cluster_down,
            every_node_is_charged_from_launch_to_gone,
            a_node_listed_again_after_its_meter_ended_runs_on,
            a_jobs_instances_are_metered_and_charged_to_its_submitter,
            a_clock_step_back_charges_each_moment_once,
            meters_written_by_another_server_are_charged_as_written,
            concurrent_requests_cannot_overspend,
            deleting_an_account_removes_its_memberships,
            the_monthly_allowance_is_credited_once_and_kept_in_the_ledger,
            two_servers_never_overspend_or_double_charge,
            every_change_is_in_the_feed_in_order,
            a_refused_change_leaves_nothing_in_the_feed,
            organisation_changes_are_in_the_feed,
            a_follower_sees_every_change_of_racing_writers_once,
            pruning_removes_only_older_changes_and_numbers_go_on,
            a_commit_bumps_the_change_notices,
            one_server_holds_the_lease_until_it_runs_out,
            a_released_or_restarted_holders_lease_is_taken_at_once,
            racing_servers_begin_one_term,
            writes_of_an_ended_term_are_refused_and_change_nothing,
            published_nodes_replace_the_last_and_go_with_the_cluster,
            obstacles_are_published_replaced_cleared_and_go_with_the_cluster,
            pool_errors_are_counted_not_repeated,
            signing_keys_are_stored_once_rotated_and_retired,
            racing_servers_store_one_first_key,
            pools_are_versioned_and_retired,
            a_pool_a_cluster_names_cannot_be_retired,
            racing_writers_of_one_version_write_it_once,
            shared_configs_keep_every_version_and_their_first_schema,
            racing_writers_of_one_shared_config_write_it_once,
            rollouts_are_paused_stopped_and_resumed,
            jobs_are_numbered_listed_and_queued_in_order,
            a_job_goes_through_its_attempts_step_by_step,
            a_cancelled_job_never_starts_again,
            a_jobs_steps_are_fenced_and_checked_against_the_version_read,
            racing_servers_start_one_attempt,
            schedules_are_created_once_changed_from_what_was_read_and_deleted,
            a_fire_queues_its_job_with_the_schedules_next_time,
            a_trigger_is_noted_once_by_its_path_and_digest,
            racing_servers_note_a_trigger_once_and_a_lost_lease_notes_nothing,
            subscriptions_are_kept_per_account_and_removed,
            a_change_is_queued_once_per_subscription_under_the_lease,
            deliveries_are_retried_and_a_failing_subscription_is_disabled,
            a_refused_trigger_is_a_change_its_account_reads,
            racing_servers_fire_one_due_time_once_and_only_under_the_lease
        );
    };
    (@each $harness:path, $($check:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                $crate::contract::$check($harness().await).await;
            }
        )+
    };
}

/// The holder of the lease the checks take.
pub const CONTRACT_HOLDER: &str = "contract";

/// Takes the leader's lease, for the checks that make the leader's writes.
pub async fn lead(store: &dyn Store) -> Fence {
    store
        .acquire_lease(CONTRACT_HOLDER, std::time::Duration::from_secs(3600), t(0))
        .await
        .expect("acquire_lease")
        .expect("nobody else holds the lease")
}

/// A fixed origin, so records compare whole.
fn t(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_700_000_000_000).expect("valid time")
        + Duration::seconds(seconds)
}

fn name(s: &str) -> ClusterName {
    ClusterName::new(s).expect("valid cluster name")
}

fn pool(s: &str) -> PoolName {
    PoolName::new(s).expect("valid pool name")
}

fn command(cluster: &str, nodes: u32, is_public: bool, pool_name: &str) -> DeployCommand {
    let limits = Limits::default();
    DeployCommand {
        cluster: name(cluster),
        node_capacity: NodeCapacity::new(i64::from(nodes), &limits).expect("valid capacity"),
        time_to_live: TimeToLive::new(3600, &limits).expect("valid ttl"),
        is_public: Some(is_public),
        pool: Some(pool(pool_name)),
        workload: None,
        default_pool: pool("default"),
    }
}

async fn get(store: &dyn Store, cluster: &str) -> Option<ClusterRecord> {
    store
        .get_cluster(&name(cluster))
        .await
        .expect("get_cluster")
}

async fn deploy(store: &dyn Store, c: &DeployCommand, now: i64, expires: i64) -> ClusterRecord {
    store.deploy(c, t(now), t(expires)).await.expect("deploy")
}

fn sorted(mut records: Vec<ClusterRecord>) -> Vec<ClusterRecord> {
    records.sort_by(|a, b| a.name.cmp(&b.name));
    records
}

pub async fn deploy_creates_the_record(h: Harness) {
    let store = h.store.as_ref();
    assert_eq!(get(store, "alpha").await, None);

    let made = deploy(store, &command("alpha", 3, false, "default"), 0, 3600).await;
    let want = ClusterRecord {
        name: name("alpha"),
        is_public: false,
        node_capacity: NodeCapacity::from_stored(3),
        pool: pool("default"),
        workload: None,
        expires_at: Some(t(3600)),
        destroying: false,
        created_at: t(0),
        updated_at: t(0),
        generation: 1,
    };
    assert_eq!(made, want);
    assert_eq!(get(store, "alpha").await, Some(want));

    let public = deploy(store, &command("beta", 1, true, "gpu_pool"), 5, 65).await;
    assert!(public.is_public);
    assert_eq!(public.pool, pool("gpu_pool"));
    assert_eq!(get(store, "beta").await, Some(public));
    assert_eq!(
        get(store, "gamma").await,
        None,
        "no record for a cluster never deployed"
    );
}

pub async fn returned_records_equal_stored_ones(h: Harness) {
    let store = h.store.as_ref();
    // Times finer than a millisecond may be dropped by a backend, but then
    // from the returned record too: what a write returns is what a read
    // gives back.
    let now = t(0) + Duration::nanoseconds(123_456_789);
    let expires = t(60) + Duration::nanoseconds(987_654_321);
    let c = command("precise", 2, false, "default");
    let made = store.deploy(&c, now, expires).await.expect("deploy");
    assert_eq!(get(store, "precise").await.as_ref(), Some(&made));
    let expires_at = made.expires_at.expect("scheduled");
    assert!(
        (expires_at - expires).abs() < Duration::milliseconds(1),
        "{expires_at} vs {expires}"
    );
    assert!((made.created_at - now).abs() < Duration::milliseconds(1));

    let destroyed = store
        .destroy(&c.cluster, now)
        .await
        .expect("destroy")
        .expect("exists");
    assert_eq!(get(store, "precise").await.as_ref(), Some(&destroyed));
}

pub async fn redeploy_sets_capacity_and_expiry_and_bumps_generation(h: Harness) {
    let store = h.store.as_ref();
    let first = deploy(store, &command("alpha", 2, true, "default"), 0, 100).await;
    let second = deploy(store, &command("alpha", 5, true, "default"), 10, 500).await;
    let want = ClusterRecord {
        node_capacity: NodeCapacity::from_stored(5),
        expires_at: Some(t(500)),
        updated_at: t(10),
        generation: 2,
        ..first.clone()
    };
    assert_eq!(second, want);
    assert_eq!(second.created_at, first.created_at, "created_at is kept");
    assert_eq!(get(store, "alpha").await, Some(want));

    // Shortening the TTL is a change like any other.
    let third = deploy(store, &command("alpha", 1, true, "default"), 20, 50).await;
    assert_eq!(third.expires_at, Some(t(50)));
    assert_eq!(third.node_capacity.get(), 1);
    assert_eq!(third.generation, 3);
    assert_eq!(store.next_expiry().await.expect("next_expiry"), Some(t(50)));
}

fn assert_conflict(
    result: Result<ClusterRecord, StoreError>,
    cluster: &str,
    field: &str,
    current: &str,
) {
    match result {
        Err(StoreError::Conflict {
            cluster: c,
            field: f,
            current: cur,
        }) => {
            assert_eq!(c, name(cluster));
            assert_eq!(f.as_str(), field);
            assert_eq!(cur, current);
        }
        other => panic!("expected a Conflict on {field}, got {other:?}"),
    }
}

pub async fn redeploy_with_other_visibility_conflicts_and_changes_nothing(h: Harness) {
    let store = h.store.as_ref();
    let before = deploy(store, &command("alpha", 2, false, "default"), 0, 100).await;

    let result = store
        .deploy(&command("alpha", 7, true, "default"), t(10), t(900))
        .await;
    let message = result.as_ref().map(|_| ()).unwrap_err().to_string();
    assert!(
        message.contains("alpha") && message.contains("is_public"),
        "{message}"
    );
    assert_conflict(result, "alpha", "is_public", "false");
    assert_eq!(get(store, "alpha").await.as_ref(), Some(&before));

    // With both fixed fields different, visibility is reported.
    let result = store
        .deploy(&command("alpha", 7, true, "other"), t(10), t(900))
        .await;
    assert_conflict(result, "alpha", "is_public", "false");
    assert_eq!(get(store, "alpha").await.as_ref(), Some(&before));
    assert_eq!(
        store.next_expiry().await.expect("next_expiry"),
        Some(t(100))
    );
}

pub async fn redeploy_with_other_pool_conflicts_and_changes_nothing(h: Harness) {
    let store = h.store.as_ref();
    let before = deploy(store, &command("alpha", 2, true, "default"), 0, 100).await;
    let result = store
        .deploy(&command("alpha", 7, true, "big"), t(10), t(900))
        .await;
    assert_conflict(result, "alpha", "pool", "default");
    assert_eq!(get(store, "alpha").await.as_ref(), Some(&before));

    // A cluster being destroyed still has its pool until its record is gone.
    let destroyed = store
        .destroy(&name("alpha"), t(20))
        .await
        .expect("destroy")
        .expect("exists");
    let result = store
        .deploy(&command("alpha", 7, true, "big"), t(30), t(900))
        .await;
    assert_conflict(result, "alpha", "pool", "default");
    assert_eq!(
        get(store, "alpha").await.as_ref(),
        Some(&destroyed),
        "still destroying"
    );
}

/// A resize that says nothing of visibility or pool keeps the cluster's; a
/// new cluster deployed that way is private, on the default pool.
pub async fn a_deploy_that_names_no_fixed_field_keeps_them(h: Harness) {
    let store = h.store.as_ref();
    let unsaid = |cluster: &str, nodes: u32| DeployCommand {
        is_public: None,
        pool: None,
        ..command(cluster, nodes, false, "default")
    };
    deploy(store, &command("alpha", 2, true, "big"), 0, 100).await;
    let resized = store
        .deploy(&unsaid("alpha", 5), t(10), t(900))
        .await
        .expect("a resize that names neither is no conflict");
    assert_eq!(resized.node_capacity.get(), 5);
    assert!(resized.is_public, "still public");
    assert_eq!(resized.pool, pool("big"), "still on its pool");
    assert_eq!(get(store, "alpha").await.as_ref(), Some(&resized));

    // Naming only one of them checks only that one.
    let result = store
        .deploy(
            &DeployCommand {
                pool: Some(pool("default")),
                ..unsaid("alpha", 6)
            },
            t(20),
            t(900),
        )
        .await;
    assert_conflict(result, "alpha", "pool", "big");
    assert_eq!(get(store, "alpha").await.as_ref(), Some(&resized));

    let fresh = store
        .deploy(&unsaid("beta", 1), t(30), t(900))
        .await
        .expect("deploy");
    assert!(!fresh.is_public, "a new cluster is private unless asked");
    assert_eq!(fresh.pool, pool("default"));
}

/// A workload is stored with the cluster, kept by a resize that does not
/// name it, and refused (changing nothing) when another is named.
pub async fn a_workload_is_kept_and_fixed_once_deployed(h: Harness) {
    let store = h.store.as_ref();
    let serve = flotilla_domain::Workload::new("serve --port 80".into(), Some(8080)).unwrap();
    let with = |nodes: u32, workload: Option<flotilla_domain::Workload>| DeployCommand {
        workload,
        is_public: None,
        pool: None,
        ..command("alpha", nodes, false, "default")
    };
    let first = deploy(store, &with(1, Some(serve.clone())), 0, 100).await;
    assert_eq!(first.workload.as_ref(), Some(&serve));
    assert_eq!(get(store, "alpha").await.as_ref(), Some(&first));
    let resized = store
        .deploy(&with(3, None), t(10), t(900))
        .await
        .expect("a resize that names no workload keeps it");
    assert_eq!(resized.workload.as_ref(), Some(&serve));
    let again = store
        .deploy(&with(4, Some(serve.clone())), t(20), t(900))
        .await
        .expect("the same workload is no conflict");
    assert_eq!(again.node_capacity.get(), 4);
    let other = flotilla_domain::Workload::new("serve --port 81".into(), Some(8080)).unwrap();
    let result = store.deploy(&with(5, Some(other)), t(30), t(900)).await;
    assert_conflict(result, "alpha", "workload", "\"serve --port 80\"");
    assert_eq!(get(store, "alpha").await.as_ref(), Some(&again));

    // A cluster deployed without one takes none, and then may not add one.
    deploy(store, &command("beta", 1, false, "default"), 40, 900).await;
    let add = DeployCommand {
        cluster: name("beta"),
        ..with(1, Some(serve))
    };
    let result = store.deploy(&add, t(50), t(900)).await;
    assert_conflict(result, "beta", "workload", "none");
}

pub async fn extend_moves_only_the_deadline_of_a_deployed_cluster(h: Harness) {
    let store = h.store.as_ref();
    assert_eq!(
        store
            .extend(&name("ghost"), t(0), t(100))
            .await
            .expect("extend"),
        None,
        "nothing to extend"
    );
    assert_eq!(get(store, "ghost").await, None, "extend creates no record");

    let before = deploy(store, &command("alpha", 3, true, "big"), 0, 100).await;
    let after = store
        .extend(&name("alpha"), t(10), t(5000))
        .await
        .expect("extend")
        .expect("deployed");
    assert_eq!(after.expires_at, Some(t(5000)));
    assert_eq!(after.generation, before.generation + 1);
    assert_eq!(
        ClusterRecord {
            expires_at: before.expires_at,
            generation: before.generation,
            updated_at: before.updated_at,
            ..after.clone()
        },
        before,
        "only the deadline moved"
    );
    assert_eq!(get(store, "alpha").await.as_ref(), Some(&after));
    assert_eq!(
        store.next_expiry().await.expect("next_expiry"),
        Some(t(5000))
    );
    let feed = store.changes(0, 100, None).await.expect("changes");
    assert_eq!(
        feed.last().map(|c| (c.kind, c.cluster_record())),
        Some((ChangeKind::ClusterExtended, Some(after.clone())))
    );

    // A cluster being destroyed is not brought back by extending it.
    let destroyed = store
        .destroy(&name("alpha"), t(20))
        .await
        .expect("destroy")
        .expect("exists");
    assert_eq!(
        store
            .extend(&name("alpha"), t(30), t(6000))
            .await
            .expect("extend"),
        None
    );
    assert_eq!(get(store, "alpha").await.as_ref(), Some(&destroyed));
}

pub async fn destroy_marks_destroying_and_clears_expiry(h: Harness) {
    let store = h.store.as_ref();
    assert_eq!(
        store.destroy(&name("ghost"), t(0)).await.expect("destroy"),
        None
    );
    assert_eq!(get(store, "ghost").await, None, "destroy creates no record");

    let made = deploy(store, &command("alpha", 3, false, "default"), 0, 100).await;
    let destroyed = store.destroy(&name("alpha"), t(20)).await.expect("destroy");
    let want = ClusterRecord {
        destroying: true,
        expires_at: None,
        updated_at: t(20),
        generation: 2,
        ..made
    };
    assert_eq!(destroyed.as_ref(), Some(&want));
    assert_eq!(get(store, "alpha").await.as_ref(), Some(&want));
    assert_eq!(want.wanted_nodes(), 0);
    assert_eq!(store.next_expiry().await.expect("next_expiry"), None);

    let again = store
        .destroy(&name("alpha"), t(30))
        .await
        .expect("destroy")
        .expect("exists");
    assert!(again.destroying);
    assert_eq!(again.expires_at, None);
    assert!(
        again.generation >= want.generation,
        "generation never goes back"
    );
    assert_eq!(get(store, "alpha").await, Some(again));
}

pub async fn deploy_after_destroy_revives_the_cluster(h: Harness) {
    let store = h.store.as_ref();
    let made = deploy(store, &command("alpha", 2, false, "default"), 0, 100).await;
    let destroyed = store
        .destroy(&name("alpha"), t(10))
        .await
        .expect("destroy")
        .expect("exists");
    let revived = deploy(store, &command("alpha", 4, false, "default"), 30, 90).await;
    let want = ClusterRecord {
        node_capacity: NodeCapacity::from_stored(4),
        expires_at: Some(t(90)),
        destroying: false,
        updated_at: t(30),
        generation: destroyed.generation + 1,
        ..made
    };
    assert_eq!(revived, want);
    assert_eq!(get(store, "alpha").await, Some(want));
    assert_eq!(store.next_expiry().await.expect("next_expiry"), Some(t(90)));
}

pub async fn expire_due_fires_exactly_the_due_clusters_once(h: Harness) {
    let store = h.store.as_ref();
    let fence = lead(store).await;
    assert!(store
        .expire_due(t(0), fence)
        .await
        .expect("expire_due")
        .is_empty());

    let a = deploy(store, &command("a", 1, false, "default"), 0, 10).await;
    let b = deploy(store, &command("b", 2, false, "default"), 0, 20).await;
    let c = deploy(store, &command("c", 3, false, "default"), 0, 30).await;
    deploy(store, &command("d", 1, false, "default"), 0, 5).await;
    let d = store
        .destroy(&name("d"), t(1))
        .await
        .expect("destroy")
        .expect("exists");

    // Due means at or before `now`.
    let fired = sorted(store.expire_due(t(20), fence).await.expect("expire_due"));
    let fire = |r: ClusterRecord| ClusterRecord {
        destroying: true,
        expires_at: None,
        updated_at: t(20),
        generation: r.generation + 1,
        ..r
    };
    assert_eq!(fired, vec![fire(a.clone()), fire(b.clone())]);
    assert_eq!(get(store, "a").await, Some(fire(a)));
    assert_eq!(get(store, "b").await, Some(fire(b)));
    assert_eq!(get(store, "c").await.as_ref(), Some(&c), "not yet due");
    assert_eq!(
        get(store, "d").await.as_ref(),
        Some(&d),
        "already destroying"
    );

    assert!(
        store
            .expire_due(t(20), fence)
            .await
            .expect("expire_due")
            .is_empty(),
        "fires once"
    );
    assert!(store
        .expire_due(t(29), fence)
        .await
        .expect("expire_due")
        .is_empty());
    assert_eq!(store.next_expiry().await.expect("next_expiry"), Some(t(30)));

    let fired = store.expire_due(t(1000), fence).await.expect("expire_due");
    assert_eq!(
        fired.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
    assert_eq!(store.next_expiry().await.expect("next_expiry"), None);
}

pub async fn next_expiry_is_the_earliest_live_deadline(h: Harness) {
    let store = h.store.as_ref();
    assert_eq!(store.next_expiry().await.expect("next_expiry"), None);

    deploy(store, &command("a", 1, false, "default"), 0, 300).await;
    deploy(store, &command("b", 1, false, "default"), 0, 100).await;
    deploy(store, &command("c", 1, false, "default"), 0, 200).await;
    assert_eq!(
        store.next_expiry().await.expect("next_expiry"),
        Some(t(100))
    );

    store.destroy(&name("b"), t(1)).await.expect("destroy");
    assert_eq!(
        store.next_expiry().await.expect("next_expiry"),
        Some(t(200))
    );

    // A redeploy moves the deadline, later as well as earlier.
    deploy(store, &command("c", 1, false, "default"), 2, 400).await;
    assert_eq!(
        store.next_expiry().await.expect("next_expiry"),
        Some(t(300))
    );
    deploy(store, &command("c", 1, false, "default"), 3, 50).await;
    assert_eq!(store.next_expiry().await.expect("next_expiry"), Some(t(50)));

    store.destroy(&name("a"), t(4)).await.expect("destroy");
    store.destroy(&name("c"), t(4)).await.expect("destroy");
    assert_eq!(store.next_expiry().await.expect("next_expiry"), None);
}

pub async fn forget_needs_destroying_and_the_current_generation(h: Harness) {
    let store = h.store.as_ref();
    let fence = lead(store).await;
    assert!(!store
        .forget(&name("ghost"), 1, fence)
        .await
        .expect("forget"));

    let made = deploy(store, &command("alpha", 2, false, "default"), 0, 100).await;
    assert!(
        !store
            .forget(&name("alpha"), made.generation, fence)
            .await
            .expect("forget"),
        "a cluster not being destroyed is kept"
    );
    assert_eq!(get(store, "alpha").await.as_ref(), Some(&made));

    let destroyed = store
        .destroy(&name("alpha"), t(10))
        .await
        .expect("destroy")
        .expect("exists");
    assert!(
        !store
            .forget(&name("alpha"), made.generation, fence)
            .await
            .expect("forget"),
        "a stale generation is refused"
    );
    assert!(!store
        .forget(&name("alpha"), destroyed.generation + 1, fence)
        .await
        .expect("forget"));
    assert_eq!(get(store, "alpha").await.as_ref(), Some(&destroyed));

    assert!(store
        .forget(&name("alpha"), destroyed.generation, fence)
        .await
        .expect("forget"));
    assert_eq!(get(store, "alpha").await, None);
    assert!(store.list_clusters().await.expect("list").is_empty());
    assert!(
        !store
            .forget(&name("alpha"), destroyed.generation, fence)
            .await
            .expect("forget"),
        "already gone"
    );

    // Once forgotten, the name is free, fixed fields included.
    let fresh = deploy(store, &command("alpha", 1, true, "other"), 20, 80).await;
    assert_eq!(fresh.generation, 1);
    assert_eq!(fresh.created_at, t(20));
    assert!(fresh.is_public);

    // A redeploy between reading and forgetting wins.
    let destroyed = store
        .destroy(&name("alpha"), t(30))
        .await
        .expect("destroy")
        .expect("exists");
    let revived = deploy(store, &command("alpha", 1, true, "other"), 31, 90).await;
    assert!(!store
        .forget(&name("alpha"), destroyed.generation, fence)
        .await
        .expect("forget"));
    assert_eq!(get(store, "alpha").await, Some(revived));
}

pub async fn list_clusters_returns_all_ordered_by_name(h: Harness) {
    let store = h.store.as_ref();
    assert!(store.list_clusters().await.expect("list").is_empty());

    // Mixed case, digits and '-': the order is ClusterName's (bytewise),
    // whatever the database's collation would say.
    let names = ["b", "Beta", "a1", "a-1", "alpha", "0zero", "Z"];
    for (i, n) in names.iter().enumerate() {
        let nodes = u32::try_from(i).expect("small") + 1;
        deploy(store, &command(n, nodes, i % 2 == 0, "default"), 0, 100).await;
    }
    store.destroy(&name("alpha"), t(1)).await.expect("destroy");

    let listed = store.list_clusters().await.expect("list");
    let mut want: Vec<ClusterName> = names.iter().map(|n| name(n)).collect();
    want.sort();
    assert_eq!(
        listed.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
        want
    );
    for record in &listed {
        assert_eq!(
            get(store, record.name.as_str()).await.as_ref(),
            Some(record)
        );
    }
}

pub async fn instance_set_id_is_stable_per_driver(h: Harness) {
    let store = h.store.as_ref();
    let local = store
        .instance_set_id("local")
        .await
        .expect("instance_set_id");
    let ec2 = store.instance_set_id("ec2").await.expect("instance_set_id");
    assert_ne!(local, ec2, "each driver has its own ID");
    assert_eq!(
        store
            .instance_set_id("local")
            .await
            .expect("instance_set_id"),
        local
    );
    assert_eq!(
        store.instance_set_id("ec2").await.expect("instance_set_id"),
        ec2
    );

    // Cluster changes do not touch instance sets.
    deploy(store, &command("alpha", 1, false, "default"), 0, 100).await;
    store.destroy(&name("alpha"), t(1)).await.expect("destroy");
    assert_eq!(
        store
            .instance_set_id("local")
            .await
            .expect("instance_set_id"),
        local
    );
}

pub async fn racing_callers_get_the_same_instance_set_id(h: Harness) {
    let mut tasks = JoinSet::new();
    for _ in 0..16 {
        let store = h.store.clone();
        tasks.spawn(async move { store.instance_set_id("racy").await });
    }
    let mut ids = BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        ids.insert(joined.expect("task").expect("instance_set_id"));
    }
    assert_eq!(ids.len(), 1, "racing callers got {ids:?}");
    let id = ids.pop_first().expect("one ID");
    assert_eq!(
        h.store
            .instance_set_id("racy")
            .await
            .expect("instance_set_id"),
        id
    );
}

pub async fn concurrent_deploys_of_many_clusters_all_land(h: Harness) {
    const CLUSTERS: u32 = 50;
    let mut tasks = JoinSet::new();
    for i in 0..CLUSTERS {
        let store = h.store.clone();
        tasks.spawn(async move {
            let c = command(&format!("many-{i:02}"), i % 7 + 1, i % 2 == 0, "default");
            let made = store.deploy(&c, t(0), t(100 + i64::from(i))).await?;
            // Reads alongside the writes must neither fail nor miss them.
            let read = store.get_cluster(&c.cluster).await?;
            assert_eq!(
                read.as_ref(),
                Some(&made),
                "read after write of {}",
                c.cluster
            );
            store.list_clusters().await?;
            Ok::<_, StoreError>(made)
        });
    }
    let mut made = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        made.push(joined.expect("task").expect("concurrent deploy"));
    }
    let listed = h.store.list_clusters().await.expect("list");
    assert_eq!(listed, sorted(made));
    assert_eq!(listed.len(), CLUSTERS as usize);
    for (i, r) in listed.iter().enumerate() {
        let i = u32::try_from(i).expect("small");
        assert_eq!(r.name.as_str(), format!("many-{i:02}"));
        assert_eq!(r.node_capacity.get(), i % 7 + 1);
        assert_eq!(r.generation, 1);
    }
    assert_eq!(
        h.store.next_expiry().await.expect("next_expiry"),
        Some(t(100))
    );
}

pub async fn concurrent_deploy_and_destroy_leave_a_consistent_record(h: Harness) {
    const OPERATIONS: i64 = 40;
    let mut tasks = JoinSet::new();
    for i in 0..OPERATIONS {
        let store = h.store.clone();
        tasks.spawn(async move {
            if i % 2 == 0 {
                let nodes = u32::try_from(i % 5 + 1).expect("small");
                let c = command("contested", nodes, false, "default");
                store.deploy(&c, t(i), t(1000 + i)).await.map(Some)
            } else {
                store.destroy(&name("contested"), t(i)).await
            }
        });
    }
    let mut changes = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Some(record) = joined.expect("task").expect("deploy or destroy") {
            changes.push(record);
        }
    }
    // Every change bumps the generation exactly once, so the generations
    // returned are 1..=n with no gaps or repeats, and the last one is what
    // is stored.
    changes.sort_by_key(|r| r.generation);
    let generations: Vec<i64> = changes.iter().map(|r| r.generation).collect();
    let n = i64::try_from(changes.len()).expect("small");
    assert_eq!(generations, (1..=n).collect::<Vec<_>>());
    assert!(n >= OPERATIONS / 2, "every deploy is a change");
    for r in &changes {
        assert_eq!(
            r.destroying,
            r.expires_at.is_none(),
            "destroying iff unscheduled: {r:?}"
        );
        assert_eq!(r.created_at, changes[0].created_at);
    }
    let last = changes.last().expect("at least one change");
    assert_eq!(
        get(h.store.as_ref(), "contested").await.as_ref(),
        Some(last)
    );
    assert_eq!(h.store.list_clusters().await.expect("list").len(), 1);
}

// Accounts, grants and refresh tokens.

fn user(s: &str) -> Username {
    Username::new(s).expect("valid username")
}

fn account(username: &str, kind: AccountKind, level: Level, created: i64) -> AccountRecord {
    AccountRecord {
        username: user(username),
        kind,
        level,
        password_hash: match kind {
            AccountKind::Local => Some(format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA${username}")),
            AccountKind::Github => None,
        },
        grants: BTreeSet::new(),
        created_at: t(created),
    }
}

fn local(username: &str, level: Level) -> AccountRecord {
    account(username, AccountKind::Local, level, 0)
}

fn clusters(names: &[&str]) -> BTreeSet<ClusterName> {
    names.iter().map(|n| name(n)).collect()
}

async fn create(store: &dyn Store, account: &AccountRecord) {
    store.create_account(account).await.expect("create_account");
}

async fn get_account(store: &dyn Store, username: &str) -> Option<AccountRecord> {
    store
        .get_account(&user(username))
        .await
        .expect("get_account")
}

fn assert_account_exists<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    username: &str,
    kind: AccountKind,
) {
    match result {
        Err(StoreError::AccountExists {
            username: u,
            kind: k,
        }) => {
            assert_eq!(u, user(username));
            assert_eq!(k, kind, "the kind of the account holding the name");
        }
        other => panic!("expected AccountExists for {username}, got {other:?}"),
    }
}

/// A login's first token: issued at `issued`, expiring at `expires`.
async fn login(
    store: &dyn Store,
    id: &str,
    username: &str,
    family: &str,
    issued: i64,
    expires: i64,
) -> RefreshTokenRecord {
    let token = RefreshTokenRecord {
        id: id.to_owned(),
        username: user(username),
        family: family.to_owned(),
        issued_at: t(issued),
        expires_at: t(expires),
    };
    store
        .insert_refresh_token(&token)
        .await
        .expect("insert_refresh_token");
    token
}

async fn rotate(
    store: &dyn Store,
    presented: &str,
    next: &str,
    expires: i64,
    now: i64,
) -> Rotation {
    store
        .rotate_refresh_token(presented, next, t(expires), t(now))
        .await
        .expect("rotate_refresh_token")
}

/// Asserts that the token rotates (into a throwaway successor, so the check
/// itself uses the token up).
async fn assert_rotates(store: &dyn Store, presented: &str, username: &str, now: i64) {
    let next = format!("{presented}-checked");
    match rotate(store, presented, &next, now + 3600, now).await {
        Rotation::Rotated { account, .. } => assert_eq!(account.username, user(username)),
        other => panic!("expected {presented} to rotate, got {other:?}"),
    }
}

/// Which neutral error a refused write must be.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Duplicate,
    NotFound,
}

fn assert_violation(result: Result<(), StoreError>, kind: Refusal) {
    match (kind, result) {
        (Refusal::Duplicate, Err(StoreError::Duplicate(_)))
        | (Refusal::NotFound, Err(StoreError::NotFound(_))) => {}
        (_, other) => panic!("expected {kind:?}, got {other:?}"),
    }
}

pub async fn create_account_then_get_and_list_ordered_by_username(h: Harness) {
    let store = h.store.as_ref();
    assert!(store.list_accounts().await.expect("list").is_empty());
    assert_eq!(get_account(store, "alice").await, None);

    let mut alice = account("alice", AccountKind::Local, Level::OrgMember, 5);
    alice.grants = clusters(&["shared", "demo-1"]);
    create(store, &alice).await;
    assert_eq!(get_account(store, "alice").await.as_ref(), Some(&alice));

    // Mixed case and digits: the order is Username's (bytewise), whatever
    // the database's collation would say.
    let mut made = vec![alice];
    for (i, (n, kind, level)) in [
        ("Bob", AccountKind::Github, Level::GithubMember),
        ("zed", AccountKind::Local, Level::Admin),
        ("0day", AccountKind::Github, Level::Anonymous),
        ("a-b", AccountKind::Local, Level::OrgMember),
        ("Zoe", AccountKind::Local, Level::GithubMember),
    ]
    .into_iter()
    .enumerate()
    {
        let mut a = account(n, kind, level, i64::try_from(i).expect("small") * 10);
        if i % 2 == 0 {
            a.grants = clusters(&["shared", n]);
        }
        create(store, &a).await;
        made.push(a);
    }
    made.sort_by(|a, b| a.username.cmp(&b.username));
    let listed = store.list_accounts().await.expect("list");
    assert_eq!(listed, made);
    for a in &made {
        assert_eq!(
            get_account(store, a.username.as_str()).await.as_ref(),
            Some(a)
        );
    }
    assert_eq!(get_account(store, "nobody").await, None);
}

pub async fn create_account_with_a_taken_name_is_refused_and_changes_nothing(h: Harness) {
    let store = h.store.as_ref();
    let mut alice = local("alice", Level::OrgMember);
    alice.grants = clusters(&["kept"]);
    create(store, &alice).await;
    let gh = account("octocat", AccountKind::Github, Level::GithubMember, 1);
    create(store, &gh).await;

    // Same name, either kind: refused, naming the kind already there.
    let mut other = account("alice", AccountKind::Github, Level::Admin, 9);
    other.grants = clusters(&["stolen"]);
    let result = store.create_account(&other).await;
    let message = result.as_ref().map(|_| ()).unwrap_err().to_string();
    assert!(
        message.contains("alice") && message.contains("local"),
        "{message}"
    );
    assert_account_exists(result, "alice", AccountKind::Local);
    assert_account_exists(
        store.create_account(&local("octocat", Level::Admin)).await,
        "octocat",
        AccountKind::Github,
    );

    assert_eq!(get_account(store, "alice").await.as_ref(), Some(&alice));
    assert_eq!(get_account(store, "octocat").await.as_ref(), Some(&gh));
    assert_eq!(store.list_accounts().await.expect("list"), vec![alice, gh]);
}

pub async fn set_level_changes_only_the_level(h: Harness) {
    let store = h.store.as_ref();
    assert_eq!(
        store
            .set_level(&user("ghost"), Level::Admin)
            .await
            .expect("set_level"),
        None
    );
    assert_eq!(get_account(store, "ghost").await, None, "creates nothing");

    let mut alice = local("alice", Level::GithubMember);
    alice.grants = clusters(&["one", "two"]);
    create(store, &alice).await;
    let bob = local("bob", Level::GithubMember);
    create(store, &bob).await;

    let raised = store
        .set_level(&user("alice"), Level::Admin)
        .await
        .expect("set_level");
    let want = AccountRecord {
        level: Level::Admin,
        ..alice.clone()
    };
    assert_eq!(raised.as_ref(), Some(&want));
    assert_eq!(get_account(store, "alice").await.as_ref(), Some(&want));
    assert_eq!(get_account(store, "bob").await.as_ref(), Some(&bob));

    create(store, &local("root", Level::Admin)).await;
    let lowered = store
        .set_level(&user("alice"), Level::Anonymous)
        .await
        .expect("set_level")
        .expect("exists");
    assert_eq!(lowered.level, Level::Anonymous);
    assert_eq!(get_account(store, "alice").await, Some(lowered));
}

pub async fn set_grants_replaces_the_grants(h: Harness) {
    let store = h.store.as_ref();
    assert_eq!(
        store
            .set_grants(&user("ghost"), &clusters(&["x"]))
            .await
            .expect("set_grants"),
        None
    );
    assert_eq!(get_account(store, "ghost").await, None, "creates nothing");

    let mut alice = local("alice", Level::OrgMember);
    alice.grants = clusters(&["old-1", "kept"]);
    create(store, &alice).await;
    let mut bob = local("bob", Level::OrgMember);
    bob.grants = clusters(&["kept", "bobs"]);
    create(store, &bob).await;

    let replaced = store
        .set_grants(&user("alice"), &clusters(&["kept", "new-1", "new-2"]))
        .await
        .expect("set_grants");
    let want = AccountRecord {
        grants: clusters(&["kept", "new-1", "new-2"]),
        ..alice.clone()
    };
    assert_eq!(replaced.as_ref(), Some(&want));
    assert_eq!(get_account(store, "alice").await.as_ref(), Some(&want));
    assert_eq!(
        get_account(store, "bob").await.as_ref(),
        Some(&bob),
        "another account's grants are its own"
    );

    let cleared = store
        .set_grants(&user("alice"), &BTreeSet::new())
        .await
        .expect("set_grants")
        .expect("exists");
    assert!(cleared.grants.is_empty());
    assert_eq!(get_account(store, "alice").await, Some(cleared));
    assert_eq!(store.list_accounts().await.expect("list").len(), 2);
}

pub async fn delete_account_removes_its_grants_and_refresh_tokens(h: Harness) {
    let store = h.store.as_ref();
    assert!(!store
        .delete_account(&user("ghost"))
        .await
        .expect("delete_account"));

    let mut alice = local("alice", Level::OrgMember);
    alice.grants = clusters(&["one", "two"]);
    create(store, &alice).await;
    let bob = local("bob", Level::OrgMember);
    create(store, &bob).await;
    login(store, "alice-1", "alice", "fa", 0, 1000).await;
    login(store, "alice-2", "alice", "fb", 0, 1000).await;
    login(store, "bob-1", "bob", "fc", 0, 1000).await;

    assert!(store
        .delete_account(&user("alice"))
        .await
        .expect("delete_account"));
    assert_eq!(get_account(store, "alice").await, None);
    assert_eq!(store.list_accounts().await.expect("list"), vec![bob]);
    assert!(!store
        .delete_account(&user("alice"))
        .await
        .expect("delete_account"));

    // A new account under the old name starts with nothing of the old one.
    let again = account("alice", AccountKind::Github, Level::GithubMember, 50);
    create(store, &again).await;
    assert_eq!(get_account(store, "alice").await, Some(again));
    for id in ["alice-1", "alice-2"] {
        assert_eq!(
            rotate(store, id, &format!("{id}-next"), 2000, 10).await,
            Rotation::Invalid,
            "{id} went with its account"
        );
    }
    assert!(
        !store
            .revoke_refresh_family("alice-1", t(10))
            .await
            .expect("revoke_refresh_family"),
        "the token is gone, not merely revoked"
    );
    assert_rotates(store, "bob-1", "bob", 10).await;
}

pub async fn create_first_admin_creates_only_while_no_admin_exists(h: Harness) {
    let store = h.store.as_ref();
    // A non-admin holding the name: refused, and still no admin.
    create(store, &local("bob", Level::OrgMember)).await;
    assert_account_exists(
        store.create_first_admin(&local("bob", Level::Admin)).await,
        "bob",
        AccountKind::Local,
    );
    assert_eq!(
        get_account(store, "bob").await.map(|a| a.level),
        Some(Level::OrgMember)
    );

    let mut root = local("root", Level::Admin);
    root.grants = clusters(&["ops"]);
    assert!(store.create_first_admin(&root).await.expect("first admin"));
    assert_eq!(get_account(store, "root").await.as_ref(), Some(&root));

    assert!(!store
        .create_first_admin(&local("root", Level::Admin))
        .await
        .expect("first admin"));
    assert!(!store
        .create_first_admin(&local("second", Level::Admin))
        .await
        .expect("first admin"));
    assert_eq!(get_account(store, "second").await, None);
    assert_eq!(get_account(store, "root").await, Some(root));
    assert_eq!(store.list_accounts().await.expect("list").len(), 2);
}

pub async fn an_admin_made_by_create_account_counts_as_the_first(h: Harness) {
    let store = h.store.as_ref();
    create(store, &local("boss", Level::Admin)).await;
    assert!(!store
        .create_first_admin(&local("root", Level::Admin))
        .await
        .expect("first admin"));
    assert_eq!(get_account(store, "root").await, None);
}

pub async fn the_last_admin_can_be_neither_demoted_nor_deleted(h: Harness) {
    let store = h.store.as_ref();
    let root = local("root", Level::Admin);
    create(store, &root).await;
    create(store, &local("bob", Level::OrgMember)).await;
    let refused = |r: Result<_, StoreError>| match r {
        Err(StoreError::LastAdmin(name)) => assert_eq!(name, user("root")),
        other => panic!("expected LastAdmin, got {other:?}"),
    };
    refused(
        store
            .set_level(&user("root"), Level::OrgMember)
            .await
            .map(|_| ()),
    );
    refused(store.delete_account(&user("root")).await.map(|_| ()));
    assert_eq!(get_account(store, "root").await, Some(root));
    // Admin to admin is no demotion; other accounts are not held back.
    assert!(store
        .set_level(&user("root"), Level::Admin)
        .await
        .expect("set")
        .is_some());
    assert!(store.delete_account(&user("bob")).await.expect("delete"));
    // With a second admin, either may go, but not both.
    create(store, &local("ann", Level::Admin)).await;
    assert!(store
        .set_level(&user("root"), Level::OrgMember)
        .await
        .expect("set")
        .is_some());
    assert!(matches!(
        store.delete_account(&user("ann")).await,
        Err(StoreError::LastAdmin(_))
    ));
}

pub async fn admins_demoting_each_other_at_once_leave_one(h: Harness) {
    create(h.store.as_ref(), &local("ann", Level::Admin)).await;
    create(h.store.as_ref(), &local("bea", Level::Admin)).await;
    let mut tasks = JoinSet::new();
    for (store, name) in [(h.store.clone(), "ann"), (h.second.clone(), "bea")] {
        tasks.spawn(async move { store.set_level(&user(name), Level::OrgMember).await });
    }
    let mut demoted = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("task") {
            Ok(Some(_)) => demoted += 1,
            Err(StoreError::LastAdmin(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(demoted, 1);
    let admins = h
        .store
        .list_accounts()
        .await
        .expect("list")
        .into_iter()
        .filter(|a| a.level == Level::Admin)
        .count();
    assert_eq!(admins, 1);
}

pub async fn concurrent_create_first_admin_creates_exactly_one(h: Harness) {
    const RACERS: usize = 8;
    let mut tasks = JoinSet::new();
    for i in 0..RACERS {
        let store = h.store.clone();
        tasks.spawn(async move {
            let admin = local(&format!("admin-{i}"), Level::Admin);
            let created = store.create_first_admin(&admin).await?;
            Ok::<_, StoreError>(created.then_some(admin))
        });
    }
    let mut created = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Some(admin) = joined.expect("task").expect("create_first_admin") {
            created.push(admin);
        }
    }
    assert_eq!(created.len(), 1, "created {created:?}");
    assert_eq!(h.store.list_accounts().await.expect("list"), created);
}

pub async fn upsert_github_account_creates_then_sets_the_level(h: Harness) {
    let store = h.store.as_ref();
    let made = store
        .upsert_github_account(&user("octocat"), Level::GithubMember, t(10))
        .await
        .expect("upsert");
    let want = AccountRecord {
        username: user("octocat"),
        kind: AccountKind::Github,
        level: Level::GithubMember,
        password_hash: None,
        grants: BTreeSet::new(),
        created_at: t(10),
    };
    assert_eq!(made, want);
    assert_eq!(get_account(store, "octocat").await.as_ref(), Some(&want));

    // Joining the organisation raises the level, leaving it lowers it;
    // creation time and grants stay.
    store
        .set_grants(&user("octocat"), &clusters(&["granted"]))
        .await
        .expect("set_grants");
    let raised = store
        .upsert_github_account(&user("octocat"), Level::OrgMember, t(20))
        .await
        .expect("upsert");
    let want = AccountRecord {
        level: Level::OrgMember,
        grants: clusters(&["granted"]),
        ..want
    };
    assert_eq!(raised, want);
    assert_eq!(get_account(store, "octocat").await.as_ref(), Some(&want));
    let lowered = store
        .upsert_github_account(&user("octocat"), Level::GithubMember, t(30))
        .await
        .expect("upsert");
    assert_eq!(lowered.level, Level::GithubMember);
    assert_eq!(lowered.created_at, t(10));
    assert_eq!(get_account(store, "octocat").await, Some(lowered));
    assert_eq!(store.list_accounts().await.expect("list").len(), 1);
}

pub async fn upsert_github_account_keeps_an_admin_admin(h: Harness) {
    let store = h.store.as_ref();
    store
        .upsert_github_account(&user("octocat"), Level::GithubMember, t(0))
        .await
        .expect("upsert");
    let admin = store
        .set_level(&user("octocat"), Level::Admin)
        .await
        .expect("set_level")
        .expect("exists");
    for level in [Level::OrgMember, Level::GithubMember, Level::Anonymous] {
        let signed_in = store
            .upsert_github_account(&user("octocat"), level, t(10))
            .await
            .expect("upsert");
        assert_eq!(signed_in, admin, "signing in as {level} keeps the admin");
    }
    assert_eq!(get_account(store, "octocat").await, Some(admin));

    // Demoted by an admin, the next sign-in sets the level again. (Another
    // admin first: the last one cannot be demoted.)
    create(store, &local("root", Level::Admin)).await;
    store
        .set_level(&user("octocat"), Level::GithubMember)
        .await
        .expect("set_level");
    let signed_in = store
        .upsert_github_account(&user("octocat"), Level::OrgMember, t(20))
        .await
        .expect("upsert");
    assert_eq!(signed_in.level, Level::OrgMember);
}

pub async fn upsert_github_account_refuses_a_local_accounts_name(h: Harness) {
    let store = h.store.as_ref();
    let mut alice = local("alice", Level::GithubMember);
    alice.grants = clusters(&["mine"]);
    create(store, &alice).await;
    assert_account_exists(
        store
            .upsert_github_account(&user("alice"), Level::OrgMember, t(10))
            .await,
        "alice",
        AccountKind::Local,
    );
    assert_eq!(get_account(store, "alice").await.as_ref(), Some(&alice));
    assert_eq!(store.list_accounts().await.expect("list"), vec![alice]);
}

pub async fn rotating_a_live_token_replaces_it(h: Harness) {
    let store = h.store.as_ref();
    let mut alice = local("alice", Level::OrgMember);
    alice.grants = clusters(&["granted"]);
    create(store, &alice).await;
    login(store, "first", "alice", "family-1", 0, 1000).await;

    // Rotated hands back the account as it is now, grants included, and
    // when the successor expires: as asked, here sooner than the first.
    assert_eq!(
        rotate(store, "first", "second", 200, 50).await,
        Rotation::Rotated {
            account: alice.clone(),
            expires_at: t(200),
        }
    );
    let raised = store
        .set_level(&user("alice"), Level::Admin)
        .await
        .expect("set_level")
        .expect("exists");
    // Never later than the token it replaces: a sign-in does not outlive
    // its first token however often it is refreshed.
    assert_eq!(
        rotate(store, "second", "third", 5000, 150).await,
        Rotation::Rotated {
            account: raised,
            expires_at: t(200),
        }
    );
    assert_eq!(
        rotate(store, "third", "fourth", 5000, 200).await,
        Rotation::Invalid,
        "the third expires at 200, as the second did"
    );
}

pub async fn reusing_a_rotated_token_revokes_its_family(h: Harness) {
    let store = h.store.as_ref();
    create(store, &local("alice", Level::OrgMember)).await;
    login(store, "a1", "alice", "family-a", 0, 1000).await;
    login(store, "b1", "alice", "family-b", 0, 1000).await;

    assert!(matches!(
        rotate(store, "a1", "a2", 1000, 10).await,
        Rotation::Rotated { .. }
    ));
    // Someone replays the used token: the whole family goes.
    assert_eq!(
        rotate(store, "a1", "a2-thief", 1000, 20).await,
        Rotation::Reused
    );
    assert_eq!(
        rotate(store, "a2", "a3", 1000, 30).await,
        Rotation::Invalid,
        "the successor is revoked with its family"
    );
    assert_eq!(
        rotate(store, "a2-thief", "a3", 1000, 30).await,
        Rotation::Invalid,
        "a Reused rotation stores no successor"
    );
    assert_eq!(
        rotate(store, "a1", "a2-again", 1000, 40).await,
        Rotation::Invalid,
        "once revoked, the used token is merely invalid"
    );
    // Another login of the same account is untouched.
    assert_rotates(store, "b1", "alice", 50).await;
}

pub async fn expired_unknown_and_revoked_tokens_are_invalid(h: Harness) {
    let store = h.store.as_ref();
    create(store, &local("alice", Level::OrgMember)).await;
    login(store, "expiring", "alice", "f1", 0, 100).await;
    login(store, "just-live", "alice", "f2", 0, 101).await;
    login(store, "revoked", "alice", "f3", 0, 1000).await;

    assert_eq!(
        rotate(store, "unknown", "n1", 1000, 0).await,
        Rotation::Invalid
    );
    // Expired at its expiry time exactly, and it stays merely expired (not
    // used) however often it is presented.
    for _ in 0..2 {
        assert_eq!(
            rotate(store, "expiring", "n2", 1000, 100).await,
            Rotation::Invalid
        );
    }
    assert_eq!(
        rotate(store, "n2", "n3", 1000, 100).await,
        Rotation::Invalid,
        "no successor was stored"
    );
    assert_rotates(store, "just-live", "alice", 100).await;

    assert!(store
        .revoke_refresh_family("revoked", t(5))
        .await
        .expect("revoke_refresh_family"));
    for _ in 0..2 {
        assert_eq!(
            rotate(store, "revoked", "n4", 1000, 10).await,
            Rotation::Invalid
        );
    }
}

pub async fn revoke_refresh_family_revokes_the_whole_family(h: Harness) {
    let store = h.store.as_ref();
    create(store, &local("alice", Level::OrgMember)).await;
    assert!(!store
        .revoke_refresh_family("unknown", t(0))
        .await
        .expect("revoke_refresh_family"));

    login(store, "a1", "alice", "family-a", 0, 1000).await;
    login(store, "b1", "alice", "family-b", 0, 1000).await;
    assert!(matches!(
        rotate(store, "a1", "a2", 1000, 10).await,
        Rotation::Rotated { .. }
    ));
    assert!(matches!(
        rotate(store, "a2", "a3", 1000, 20).await,
        Rotation::Rotated { .. }
    ));

    // Logging out with a used token of the family still revokes all of it.
    assert!(store
        .revoke_refresh_family("a2", t(30))
        .await
        .expect("revoke_refresh_family"));
    assert_eq!(rotate(store, "a3", "a4", 1000, 40).await, Rotation::Invalid);
    assert_eq!(
        rotate(store, "a1", "a4", 1000, 40).await,
        Rotation::Invalid,
        "revoked before replayed: invalid, not reused"
    );
    assert!(
        store
            .revoke_refresh_family("a3", t(50))
            .await
            .expect("revoke_refresh_family"),
        "revoking again is fine"
    );
    assert_rotates(store, "b1", "alice", 60).await;
}

pub async fn revoke_refresh_tokens_revokes_all_and_counts_the_live(h: Harness) {
    let store = h.store.as_ref();
    create(store, &local("alice", Level::OrgMember)).await;
    create(store, &local("bob", Level::OrgMember)).await;
    assert_eq!(
        store
            .revoke_refresh_tokens(&user("alice"), t(0))
            .await
            .expect("revoke_refresh_tokens"),
        0
    );

    login(store, "a1", "alice", "fa", 0, 1000).await;
    assert!(matches!(
        rotate(store, "a1", "a2", 1000, 10).await,
        Rotation::Rotated { .. }
    ));
    login(store, "b1", "alice", "fb", 0, 1000).await;
    login(store, "expired", "alice", "fc", 0, 50).await;
    login(store, "revoked", "alice", "fd", 0, 1000).await;
    assert!(store
        .revoke_refresh_family("revoked", t(20))
        .await
        .expect("revoke_refresh_family"));
    login(store, "bobs", "bob", "fe", 0, 1000).await;

    // Live: a2 and b1. Not: a1 (used), expired, revoked; nor bob's.
    assert_eq!(
        store
            .revoke_refresh_tokens(&user("alice"), t(100))
            .await
            .expect("revoke_refresh_tokens"),
        2
    );
    for id in ["a2", "b1", "expired", "revoked"] {
        assert_eq!(
            rotate(store, id, &format!("{id}-next"), 2000, 110).await,
            Rotation::Invalid,
            "{id}"
        );
    }
    assert_eq!(
        rotate(store, "a1", "a1-next", 2000, 110).await,
        Rotation::Invalid,
        "a used token revoked this way is invalid, not reused"
    );
    assert_eq!(
        store
            .revoke_refresh_tokens(&user("alice"), t(120))
            .await
            .expect("revoke_refresh_tokens"),
        0
    );
    assert_eq!(
        store
            .revoke_refresh_tokens(&user("ghost"), t(120))
            .await
            .expect("revoke_refresh_tokens"),
        0
    );
    assert_rotates(store, "bobs", "bob", 130).await;

    // A later login works as ever.
    login(store, "a-new", "alice", "ff", 140, 2000).await;
    assert_rotates(store, "a-new", "alice", 150).await;
}

pub async fn refresh_tokens_need_an_account_and_a_fresh_id(h: Harness) {
    let store = h.store.as_ref();
    create(store, &local("alice", Level::OrgMember)).await;
    let orphan = RefreshTokenRecord {
        id: "orphan".to_owned(),
        username: user("ghost"),
        family: "f0".to_owned(),
        issued_at: t(0),
        expires_at: t(1000),
    };
    assert_violation(store.insert_refresh_token(&orphan).await, Refusal::NotFound);
    assert_eq!(
        rotate(store, "orphan", "o2", 1000, 10).await,
        Rotation::Invalid
    );

    let first = login(store, "first", "alice", "f1", 0, 1000).await;
    let copy = RefreshTokenRecord {
        family: "f9".to_owned(),
        ..first
    };
    assert_violation(store.insert_refresh_token(&copy).await, Refusal::Duplicate);
    login(store, "taken", "alice", "f2", 0, 1000).await;

    // A rotation whose successor's id is taken fails and changes nothing:
    // the presented token is still live, not used.
    assert_violation(
        store
            .rotate_refresh_token("first", "taken", t(1000), t(10))
            .await
            .map(|_| ()),
        Refusal::Duplicate,
    );
    assert!(matches!(
        rotate(store, "first", "second", 1000, 20).await,
        Rotation::Rotated { .. }
    ));
    assert_rotates(store, "second", "alice", 30).await;
    assert_rotates(store, "taken", "alice", 30).await;
}

pub async fn concurrent_rotations_of_one_token_rotate_it_once(h: Harness) {
    const RACERS: usize = 8;
    create(h.store.as_ref(), &local("alice", Level::OrgMember)).await;
    login(h.store.as_ref(), "contested", "alice", "family", 0, 1000).await;

    let mut tasks = JoinSet::new();
    for i in 0..RACERS {
        let store = h.store.clone();
        tasks.spawn(async move {
            let next = format!("next-{i}");
            let rotation = store
                .rotate_refresh_token("contested", &next, t(1000), t(10))
                .await?;
            Ok::<_, StoreError>((next, rotation))
        });
    }
    let mut rotated = Vec::new();
    let mut reused = 0;
    let mut invalid = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("task").expect("rotate_refresh_token") {
            (next, Rotation::Rotated { account, .. }) => {
                assert_eq!(account.username, user("alice"));
                rotated.push(next);
            }
            (_, Rotation::Reused) => reused += 1,
            (_, Rotation::Invalid) => invalid += 1,
        }
    }
    // One wins. The first loser presents a used token, which is a replay,
    // so the family (the winner's successor included) is revoked, and every
    // later loser presents a revoked token.
    assert_eq!(rotated.len(), 1, "rotated into {rotated:?}");
    assert_eq!((reused, invalid), (1, RACERS - 2));
    for i in 0..RACERS {
        assert_eq!(
            rotate(h.store.as_ref(), &format!("next-{i}"), "after", 1000, 20).await,
            Rotation::Invalid
        );
    }
}
