//! The reflector: every server follows the change feed and brings its
//! copies (desired state, organisations, the nodes the leader published)
//! up to date with what any server committed, then wakes whoever waits
//! (a reconcile if it leads, `wait` callers, other subscribers such as
//! sign-in's revocation). A commit's notice wakes it at once; it also
//! reads on a timer, since a notice can be lost.
//!
//! A command reaches this server's own copies the same way as any other
//! server's: the front door commits it, then asks for a pass at once
//! ([`catch_up`]) and answers when the pass has applied it, so a caller
//! reads what it wrote. A cluster's change carries its whole record; an
//! organisation's is read back as the store has it now. Either is applied
//! guarded by the copy's change counter (and a record's generation), so an
//! older read never undoes a newer write.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flotilla_domain::{Change, ChangeEntity, ChangeKind, ClusterName, NodeRecord, OrgName};
use tokio::time::Instant;

use flotilla_store::StoreError;

use crate::Shared;

/// How often the feed is read when no notice came.
const POLL: Duration = Duration::from_secs(1);
/// Changes read at once.
const PAGE: usize = 1000;
/// A server that does not lead reads the organisations afresh every
/// `resync_interval` (their balances move without a change in the feed),
/// and everything else the feed carries only every this many times: to
/// heal a copy gone wrong, not to keep it current. Ten thousand published
/// nodes are read in tens of milliseconds of the database's time.
const FULL_REFRESH_EVERY: u32 = 10;

/// The nodes of each cluster as the leader last published them: what a
/// server that does not lead answers STATUS from, and what the leader
/// compares its observations with to publish only changes.
#[derive(Default)]
pub(crate) struct PublishedNodes {
    nodes: RwLock<HashMap<ClusterName, (Vec<NodeRecord>, u64)>>,
}

/// A digest of a cluster's nodes, in any order: whether they may have
/// changed since they were published, without building or comparing them.
/// None has digest 0.
pub(crate) fn fingerprint<'a>(nodes: impl Iterator<Item = &'a NodeRecord>) -> u64 {
    use std::hash::{Hash, Hasher};
    combine(nodes.map(|n| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        n.hash(&mut h);
        h.finish()
    }))
}

/// The digest of nodes whose hashes are `hashes`, in any order.
pub(crate) fn combine(hashes: impl Iterator<Item = u64>) -> u64 {
    hashes.fold(0u64, u64::wrapping_add)
}

impl PublishedNodes {
    /// The digest of the cluster's published nodes (0: none).
    pub fn fingerprint(&self, cluster: &ClusterName) -> u64 {
        self.nodes
            .read()
            .unwrap()
            .get(cluster)
            .map_or(0, |(_, fp)| *fp)
    }

    pub fn get(&self, cluster: &ClusterName) -> Vec<NodeRecord> {
        self.nodes
            .read()
            .unwrap()
            .get(cluster)
            .map(|(nodes, _)| nodes.clone())
            .unwrap_or_default()
    }

    pub fn names(&self) -> Vec<ClusterName> {
        self.nodes.read().unwrap().keys().cloned().collect()
    }

    pub fn put(&self, cluster: &ClusterName, nodes: Vec<NodeRecord>) {
        let mut all = self.nodes.write().unwrap();
        if nodes.is_empty() {
            all.remove(cluster);
        } else {
            let fp = fingerprint(nodes.iter());
            all.insert(cluster.clone(), (nodes, fp));
        }
    }

    pub fn replace(&self, nodes: Vec<(ClusterName, NodeRecord)>) {
        let mut all: HashMap<ClusterName, Vec<NodeRecord>> = HashMap::new();
        for (cluster, node) in nodes {
            all.entry(cluster).or_default().push(node);
        }
        *self.nodes.write().unwrap() = all
            .into_iter()
            .map(|(cluster, nodes)| {
                let fp = fingerprint(nodes.iter());
                (cluster, (nodes, fp))
            })
            .collect();
    }
}

/// Follows the feed from `after` until the engine stops.
pub(crate) async fn run(shared: Arc<Shared>, mut after: i64) {
    let mut notices = shared.store.change_notices();
    let mut asks = shared.catch_up.subscribe();
    let mut next_refresh = Instant::now() + shared.config.resync_interval;
    let mut refreshes: u32 = 0;
    // Whether some change was not applied in full since the last full
    // refresh (a read failed, or this server led and skipped the nodes it
    // published itself): the next refresh of a server that follows then
    // reads everything.
    let mut full_due = false;
    loop {
        notices.borrow_and_update();
        // Every commit made before this ask is in the read below.
        let asked = *asks.borrow_and_update();
        let mut full_page = false;
        match shared.store.changes(after, PAGE, None).await {
            Ok(page) => {
                full_page = page.len() == PAGE;
                let mut read = PageReads::default();
                for change in &page {
                    apply(&shared, change, &mut read).await;
                    after = change.seq;
                }
                full_due |= read.incomplete;
            }
            // The commands waiting get their answer (from copies a pass
            // behind) rather than hang while the store is away.
            Err(e) => tracing::warn!(error = %e, "reading the change feed failed"),
        }
        if full_page {
            continue;
        }
        shared.caught_up.send_replace(asked);
        // The leader's syncer refreshes everything on its own timer; a
        // follower refreshes here what the feed does not carry (an
        // organisation's balance between events), and now and then the rest.
        if Instant::now() >= next_refresh {
            next_refresh = Instant::now() + shared.config.resync_interval;
            if shared.leadership.fence().is_none() {
                refreshes = refreshes.wrapping_add(1);
                let read = if full_due || refreshes.is_multiple_of(FULL_REFRESH_EVERY) {
                    let read = refresh(&shared).await;
                    full_due = read.is_err();
                    read
                } else {
                    refresh_orgs(&shared).await
                };
                if let Err(e) = read {
                    tracing::warn!(error = %e, "reading the store's records failed");
                }
            }
        }
        tokio::select! {
            changed = notices.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(POLL).await;
                }
            }
            _ = asks.changed() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = shared.stopped() => return,
        }
    }
}

/// Resolves once the reflector has applied every change committed before
/// this call (or the engine stops): how a command's writer reads its own
/// write on this server, and how it wakes the loops if this server leads.
pub(crate) async fn catch_up(shared: &Shared) {
    let mut ticket = 0;
    shared.catch_up.send_modify(|asked| {
        *asked += 1;
        ticket = *asked;
    });
    let mut served = shared.caught_up.subscribe();
    tokio::select! {
        _ = served.wait_for(|s| *s >= ticket) => {}
        _ = shared.stopped() => {}
    }
}

/// What a pass has read back from the store while applying one page: a
/// read made after the page was read is as new as every change in it, so
/// each record is read once per page however many changes name it (an
/// organisation's command records an event each, and its cluster).
#[derive(Default)]
struct PageReads {
    orgs: HashSet<OrgName>,
    nodes: HashSet<ClusterName>,
    pools: bool,
    shared_configs: bool,
    /// Some change of the page was not applied in full: a read failed, or
    /// this server led and did not read the nodes it published.
    incomplete: bool,
}

async fn apply(shared: &Shared, change: &Change, read: &mut PageReads) {
    let leading = shared.leadership.fence().is_some();
    match change.kind.entity() {
        ChangeEntity::Cluster => {
            let Ok(name) = ClusterName::new(change.key.as_str()) else {
                return;
            };
            if change.kind == ChangeKind::ClusterNodes {
                if leading {
                    read.incomplete = true;
                } else if read.nodes.insert(name.clone()) {
                    match shared.store.published_nodes(Some(&name)).await {
                        Ok(nodes) => shared
                            .observed
                            .put(&name, nodes.into_iter().map(|(_, n)| n).collect()),
                        Err(e) => {
                            read.incomplete = true;
                            tracing::warn!(error = %e, "reading published nodes failed")
                        }
                    }
                }
            } else if matches!(
                change.kind,
                ChangeKind::ClusterError | ChangeKind::ClusterErrorCleared
            ) {
                let mut published = shared.published_obstacles.lock().unwrap();
                match change.obstacle() {
                    Some(o) => published.insert(name.clone(), o),
                    None => published.remove(&name),
                };
            } else {
                if change.kind == ChangeKind::ClusterForgotten {
                    // Forgotten with its last node; its published nodes
                    // and what stood in its way went with it.
                    shared.observed.put(&name, Vec::new());
                    shared.published_obstacles.lock().unwrap().remove(&name);
                }
                let mark = shared.desired.mark();
                let record = match change.cluster_record() {
                    Some(record) => Ok(Some(record)),
                    None => shared.store.get_cluster(&name).await,
                };
                match record {
                    // Only a forget removes a record: a read that finds
                    // none after any other change is older than the
                    // change, and the forget, if any, comes next.
                    Ok(None) if change.kind != ChangeKind::ClusterForgotten => {}
                    Ok(record) => shared.desired.reflect(&name, record, mark),
                    Err(e) => {
                        read.incomplete = true;
                        tracing::warn!(error = %e, cluster = %name, "reading a changed cluster failed")
                    }
                }
                if leading {
                    // A person's command (or a deadline) goes before a
                    // resync's wake-ups.
                    shared.expiry_changed.notify_one();
                    shared.runtime.wake_first(name.clone());
                }
            }
            shared.notify_changed(&name);
        }
        ChangeEntity::Org => {
            let Ok(name) = OrgName::new(change.key.as_str()) else {
                return;
            };
            if read.orgs.insert(name.clone()) {
                let mark = shared.orgs.mark();
                match shared.store.get_org(&name).await {
                    Ok(org) => shared.orgs.reflect(&name, org, mark),
                    Err(e) => {
                        read.incomplete = true;
                        tracing::warn!(error = %e, org = %name, "reading a changed organisation failed")
                    }
                }
            }
            if leading {
                shared.capacity_changed.notify_one();
            }
            shared.notify_changed(&name);
        }
        ChangeEntity::Pool => {
            if !read.pools {
                // Read again for the next change if this read failed (and by
                // the leader's resync and a follower's refresh anyway).
                let read_all = async {
                    crate::pools::refresh(shared).await?;
                    crate::rollout::refresh(shared).await
                };
                match read_all.await {
                    Ok(()) => read.pools = true,
                    Err(e) => {
                        read.incomplete = true;
                        tracing::warn!(error = %e, "reading the pools failed")
                    }
                }
            }
            // Its clusters may have waited for it (or must stop using it).
            if leading {
                for name in shared.desired.names() {
                    if shared
                        .desired
                        .get(&name)
                        .is_some_and(|r| r.pool.as_str() == change.key)
                    {
                        shared.runtime.wake(name);
                    }
                }
            }
        }
        ChangeEntity::SharedConfig => {
            if !read.shared_configs {
                match crate::pools::refresh_shared(shared).await {
                    Ok(()) => read.shared_configs = true,
                    Err(e) => {
                        read.incomplete = true;
                        tracing::warn!(error = %e, "reading the shared configs failed")
                    }
                }
            }
            // Clusters waiting for an image from it may launch now.
            if leading {
                let pools = shared.pools.snapshot();
                for name in shared.desired.names() {
                    let uses = shared.desired.get(&name).is_some_and(|r| {
                        pools.get(&r.pool).is_some_and(|p| {
                            p.image
                                .as_ref()
                                .and_then(|i| i.shared())
                                .is_some_and(|(s, _)| s == change.key)
                        })
                    });
                    if uses {
                        shared.runtime.wake(name);
                    }
                }
            }
        }
        ChangeEntity::Job => {
            if leading {
                shared.jobs.changed.notify_one();
            }
        }
        ChangeEntity::Schedule => {
            if leading {
                shared.jobs.schedules_changed.notify_one();
            }
        }
        ChangeEntity::Account
        | ChangeEntity::Server
        | ChangeEntity::Dropbox
        | ChangeEntity::Notification => {}
    }
    // Nobody listening is fine.
    let _ = shared.changes.send(change.clone());
}

/// Reads the organisations afresh.
async fn refresh_orgs(shared: &Shared) -> Result<(), StoreError> {
    let mark = shared.orgs.mark();
    let orgs = shared.store.list_orgs().await?;
    shared.orgs.refresh(orgs, mark);
    Ok(())
}

/// Reads desired state, organisations and published nodes afresh.
pub(crate) async fn refresh(shared: &Shared) -> Result<(), StoreError> {
    let mark = shared.desired.mark();
    let records = shared.store.list_clusters().await?;
    shared.desired.refresh(records, mark);
    refresh_orgs(shared).await?;
    shared
        .observed
        .replace(shared.store.published_nodes(None).await?);
    let obstacles = shared.store.published_obstacles().await?;
    *shared.published_obstacles.lock().unwrap() = obstacles.into_iter().collect();
    crate::pools::refresh(shared).await?;
    crate::pools::refresh_shared(shared).await?;
    crate::rollout::refresh(shared).await?;
    Ok(())
}
