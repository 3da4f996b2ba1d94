//! Node meters: every node of an organisation's cluster is charged from its
//! launch until a listing no longer shows it. A meter is written when the
//! leader publishes the cluster's nodes (within moments of a create, and
//! before the leader destroys a node it has not published), ends when a
//! published listing stops showing the node, and is charged by the accrual
//! passes until it is settled. Meters live in the store, so a restart
//! loses none: a node that went while no server watched is charged up to
//! the first listing that no longer shows it, and the ledger says so.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use flotilla_domain::{InstanceId, LedgerEntry, NodeEndSeen, NodeMeter, NodePrices, OrgName};

use crate::ClusterNodes;

/// What publishing one metered cluster's nodes does to its meters.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MeterWrites {
    /// Meters to add (ended already when the node came and went between
    /// two publications); one already on record is left as it is.
    pub add: Vec<NodeMeter>,
    /// Meters on record that end now, or (listed again) reopen.
    pub changed: Vec<NodeMeter>,
    /// Ledger notes for the nodes that went while no server watched, by
    /// organisation.
    pub notes: Vec<(OrgName, LedgerEntry)>,
}

impl MeterWrites {
    /// The organisations whose meters these writes change, each once.
    pub fn orgs(&self) -> Vec<OrgName> {
        let mut orgs: Vec<OrgName> = self
            .add
            .iter()
            .chain(&self.changed)
            .map(|m| m.cluster.clone())
            .collect();
        orgs.sort();
        orgs.dedup();
        orgs
    }
}

/// Works out [`MeterWrites`] for `published`, given the cluster's meters
/// on record that are not settled yet and those of the nodes it lists;
/// `now` is when the listing published was taken in. A listed node whose
/// meter ended (a listing missed it) has it reopened: it ran all along.
pub fn on_publish(
    on_record: Vec<NodeMeter>,
    published: &ClusterNodes,
    prices: &NodePrices,
    now: DateTime<Utc>,
) -> MeterWrites {
    let mut writes = MeterWrites::default();
    let mut on_record: HashMap<InstanceId, NodeMeter> =
        on_record.into_iter().map(|m| (m.id.clone(), m)).collect();
    let cluster = &published.cluster;
    let mut accounted = std::collections::HashSet::new();
    for n in &published.nodes {
        accounted.insert(&n.id);
        match on_record.get_mut(&n.id) {
            None => writes.add.push(NodeMeter::new(
                cluster.clone(),
                n.id.clone(),
                n.launched_at,
                prices.of(&n.instance_type),
            )),
            Some(m) if m.end.is_some() => {
                m.reopen();
                writes.changed.push(m.clone());
            }
            Some(_) => {}
        }
    }
    for g in &published.gone {
        accounted.insert(&g.id);
        match on_record.get_mut(&g.id) {
            Some(m) if m.end.is_none() => {
                m.end_at(g.gone_at, NodeEndSeen::Gone);
                writes.changed.push(m.clone());
            }
            Some(_) => {}
            None => {
                let price = prices.of(&g.instance_type);
                let mut m = NodeMeter::new(cluster.clone(), g.id.clone(), g.launched_at, price);
                m.end_at(g.gone_at, NodeEndSeen::Gone);
                writes.add.push(m);
            }
        }
    }
    let mut unwatched: Vec<NodeMeter> = on_record
        .into_values()
        .filter(|m| m.end.is_none() && !accounted.contains(&m.id))
        .collect();
    unwatched.sort_by(|a, b| a.launched_at.cmp(&b.launched_at).then(a.id.cmp(&b.id)));
    for mut m in unwatched {
        m.end_at(now, NodeEndSeen::Unwatched);
        writes
            .notes
            .extend(m.unwatched_note().map(|n| (cluster.clone(), n)));
        writes.changed.push(m);
    }
    writes
}

/// Works out [`MeterWrites`] for a listing of the job attempts' instances
/// taken in at `now`: `listed` holds the meter each listed instance of a
/// job charged to an organisation would get, `on_record` the job meters
/// not settled plus the settled ones of the instances listed. A listed
/// instance not on record is put on the meter (from its launch); one whose
/// meter ended (a listing missed it) has it reopened; a running meter
/// whose instance is no longer listed ends at `now`, as `unwatched` when
/// no server may have watched it go (the first listing of a term).
pub fn on_job_listing(
    on_record: Vec<NodeMeter>,
    listed: Vec<NodeMeter>,
    now: DateTime<Utc>,
    unwatched: bool,
) -> MeterWrites {
    let mut writes = MeterWrites::default();
    let mut on_record: HashMap<(OrgName, InstanceId), NodeMeter> = on_record
        .into_iter()
        .map(|m| ((m.cluster.clone(), m.id.clone()), m))
        .collect();
    let mut accounted = std::collections::HashSet::new();
    for m in listed {
        let key = (m.cluster.clone(), m.id.clone());
        match on_record.get_mut(&key) {
            None => writes.add.push(m),
            Some(m) if m.end.is_some() => {
                m.reopen();
                writes.changed.push(m.clone());
            }
            Some(_) => {}
        }
        accounted.insert(key);
    }
    let mut gone: Vec<NodeMeter> = on_record
        .into_iter()
        .filter(|(key, m)| m.end.is_none() && !accounted.contains(key))
        .map(|(_, m)| m)
        .collect();
    gone.sort_by(|a, b| a.launched_at.cmp(&b.launched_at).then(a.id.cmp(&b.id)));
    let seen = if unwatched {
        NodeEndSeen::Unwatched
    } else {
        NodeEndSeen::Gone
    };
    for mut m in gone {
        m.end_at(now, seen);
        writes
            .notes
            .extend(m.unwatched_note().map(|n| (m.cluster.clone(), n)));
        writes.changed.push(m);
    }
    writes
}

/// A meter as the backends store it. A running meter charged up to its
/// organisation's `accrued_until` *follows* it: the pass that moves
/// `accrued_until` moves the meter too, with no row written per node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMeter {
    /// A following meter's `charged_until` is its organisation's, not this.
    pub meter: NodeMeter,
    pub follows: bool,
}

/// The meters not yet settled, by organisation, as this process last read
/// or wrote them. Each organisation's copy is tagged with the organisation's
/// `meters_version` at that moment; every transaction that changes an
/// organisation's meters raises that version, so a copy whose version is
/// still the stored one is exact, whichever process wrote since. An
/// accrual pass then reads only what changed instead of every running
/// meter.
#[derive(Debug, Default)]
pub struct MeterCache {
    orgs: HashMap<OrgName, (i64, Vec<StoredMeter>)>,
}

impl MeterCache {
    /// True until the first fill: there is nothing to keep, read them all.
    pub fn is_empty(&self) -> bool {
        self.orgs.is_empty()
    }

    /// The organisations of `versions` whose copy is missing or outdated.
    pub fn stale(&self, versions: &HashMap<OrgName, i64>) -> Vec<OrgName> {
        let mut stale: Vec<OrgName> = versions
            .iter()
            .filter(|(org, v)| self.orgs.get(*org).is_none_or(|(have, _)| have != *v))
            .map(|(org, _)| org.clone())
            .collect();
        stale.sort();
        stale
    }

    /// Replaces the copies of `stale` with `read`, their meters as stored
    /// now (an organisation with none read has none).
    pub fn refill(
        &mut self,
        stale: &[OrgName],
        versions: &HashMap<OrgName, i64>,
        read: Vec<StoredMeter>,
    ) {
        for org in stale {
            self.orgs.insert(
                org.clone(),
                (versions.get(org).copied().unwrap_or(0), Vec::new()),
            );
        }
        for m in read {
            if let Some((_, meters)) = self.orgs.get_mut(&m.meter.cluster) {
                meters.push(m);
            }
        }
    }

    /// Takes an organisation's meters out, for a pass.
    pub fn take(&mut self, org: &OrgName) -> Vec<StoredMeter> {
        self.orgs.remove(org).map(|(_, m)| m).unwrap_or_default()
    }

    /// Puts an organisation's meters back after a pass, at `version`.
    pub fn put(&mut self, org: OrgName, version: i64, meters: Vec<StoredMeter>) {
        self.orgs.insert(org, (version, meters));
    }
}

/// One organisation's meters made ready for `Organisation::accrue`: each
/// following meter charged up to `accrued_until`. The second vector is
/// what each was before, for [`after_pass`].
pub fn for_pass(
    stored: Vec<StoredMeter>,
    accrued_until: Option<DateTime<Utc>>,
) -> (Vec<NodeMeter>, Vec<Before>) {
    stored
        .into_iter()
        .map(|s| {
            let mut m = s.meter;
            if s.follows {
                m.charged_until = accrued_until;
            }
            let before = Before {
                follows: s.follows,
                charged_until: m.charged_until,
            };
            (m, before)
        })
        .unzip()
}

/// What a meter was before a pass.
#[derive(Debug, Clone, Copy)]
pub struct Before {
    follows: bool,
    charged_until: Option<DateTime<Utc>>,
}

/// What an accrual pass writes back of the meters it charged.
#[derive(Debug, Default)]
pub struct PassWrites {
    /// Running meters charged to their organisation's `accrued_until` that
    /// follow it from now on.
    pub follow: Vec<NodeMeter>,
    /// Meters written as they are: ended (settled or not), or running
    /// but charged to another moment than `accrued_until` (the clock
    /// stepped back behind it).
    pub written: Vec<NodeMeter>,
    /// The organisations whose meters these are; each one's
    /// `meters_version` goes up by one.
    pub touched: Vec<OrgName>,
}

impl PassWrites {
    /// Sorts out one organisation's meters after `Organisation::accrue`
    /// charged them (`after`, in the order [`for_pass`] gave them) and
    /// moved its `accrued_until` to `accrued`. Returns the meters still
    /// unsettled, as stored once the writes are made, and whether any
    /// changed.
    pub fn after_pass(
        &mut self,
        org: &OrgName,
        before: Vec<Before>,
        after: Vec<NodeMeter>,
        accrued: Option<DateTime<Utc>>,
    ) -> (Vec<StoredMeter>, bool) {
        let mut kept = Vec::with_capacity(after.len());
        let mut touched = false;
        for (b, m) in before.into_iter().zip(after) {
            if m.settled() {
                touched = true;
                self.written.push(m);
                continue;
            }
            let follows =
                m.end.is_none() && m.charged_until.is_some() && m.charged_until == accrued;
            if follows && !b.follows {
                touched = true;
                self.follow.push(m.clone());
            } else if !follows && (b.follows || b.charged_until != m.charged_until) {
                touched = true;
                self.written.push(m.clone());
            }
            kept.push(StoredMeter { meter: m, follows });
        }
        if touched {
            self.touched.push(org.clone());
        }
        (kept, touched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_domain::{ClusterName, InstanceType, NodeRecord, NodeState, PoolSpec, PoolType};

    #[test]
    fn each_node_is_metered_at_its_types_price() {
        let ty = |n: &str| InstanceType::new(n).unwrap();
        let price = |s: &str| s.parse::<flotilla_domain::Money>().unwrap();
        let mut pool = PoolSpec::new("aws", ty("t3.small"));
        pool.types = vec![
            PoolType {
                instance_type: ty("t3.small"),
                price_per_hour: price("0.02"),
            },
            PoolType {
                instance_type: ty("m5.large"),
                price_per_hour: price("0.10"),
            },
        ];
        let now = Utc::now();
        let node = |id: &str, t: &str| NodeRecord {
            id: InstanceId::new(id),
            instance_type: ty(t),
            launched_at: now,
            state: NodeState::Ready,
            state_since: now,
            address: None,
            pool_version: None,
        };
        let published = ClusterNodes {
            cluster: ClusterName::new("lab").unwrap(),
            is_public: false,
            nodes: vec![
                node("a", "t3.small"),
                node("b", "m5.large"),
                node("c", "c5.large"),
            ],
            meter: Some(pool.prices()),
            gone: vec![crate::GoneNode {
                id: InstanceId::new("d"),
                instance_type: ty("m5.large"),
                launched_at: now,
                gone_at: now,
            }],
        };
        let writes = on_publish(Vec::new(), &published, &pool.prices(), now);
        let prices: Vec<(&str, String)> = writes
            .add
            .iter()
            .map(|m| (m.id.as_str(), m.price_per_hour.to_string()))
            .collect();
        assert_eq!(
            prices,
            [
                ("a", price("0.02").to_string()),
                ("b", price("0.10").to_string()),
                ("c", price("0.10").to_string()),
                ("d", price("0.10").to_string())
            ],
            "a type the pool no longer names is charged at its dearest"
        );
    }
}
