//! Node meters: every node of an organisation's cluster is charged from its
//! launch until a listing no longer shows it. A meter is written when the
//! leader publishes the cluster's nodes (within moments of a create, and
//! before the leader destroys a node it has not published), ends when a
//! published listing stops showing the node, and is charged by the accrual
//! passes until it is settled. Meters live in the store, so a restart
//! loses none: a node that went while no server watched is charged up to
//! the first listing that no longer shows it, and the ledger says so.

use chrono::{DateTime, Utc};
use flotilla_domain::{InstanceId, LedgerEntry, Money, NodeEndSeen, NodeMeter};

use crate::ClusterNodes;

/// What publishing one metered cluster's nodes does to its meters.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MeterWrites {
    /// Meters to add (ended already when the node came and went between
    /// two publications); one already on record is left as it is.
    pub add: Vec<NodeMeter>,
    /// Meters on record that end now, or (listed again) reopen.
    pub changed: Vec<NodeMeter>,
    /// Ledger notes for the nodes that went while no server watched.
    pub notes: Vec<LedgerEntry>,
}

/// Works out [`MeterWrites`] for `published`, given the cluster's meters
/// on record that are not settled yet and those of the nodes it lists;
/// `now` is when the listing published was taken in. A listed node whose
/// meter ended (a listing missed it) has it reopened: it ran all along.
pub fn on_publish(
    on_record: Vec<NodeMeter>,
    published: &ClusterNodes,
    price_per_hour: Money,
    now: DateTime<Utc>,
) -> MeterWrites {
    let mut writes = MeterWrites::default();
    let mut on_record: std::collections::HashMap<InstanceId, NodeMeter> =
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
                price_per_hour,
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
                let mut m =
                    NodeMeter::new(cluster.clone(), g.id.clone(), g.launched_at, price_per_hour);
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
        writes.notes.extend(m.unwatched_note());
        writes.changed.push(m);
    }
    writes
}
