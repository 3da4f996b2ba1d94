//! The scheduler's one choice (seed 002's): the cheapest instance that
//! fits a job, among the types of the pools it may run on, or why none
//! will do now. Pure: the caller gathers the offers (each pool's types,
//! their prices, what the driver knows of their size and spot price, the
//! capacity back-offs in force) and acts on the answer.

use std::fmt;

use crate::job::{QueueKey, Resources};
use crate::money::Money;
use crate::names::{InstanceType, PoolName};

/// What one instance of a type has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub vcpus: u32,
    pub memory_mib: u64,
}

impl Shape {
    /// Whether it has what `asked` asks. A disk is sized for the job at
    /// launch, so it does not decide the type.
    pub fn fits(&self, asked: &Resources) -> bool {
        asked.vcpus.is_none_or(|v| self.vcpus >= v)
            && asked.memory_mib.is_none_or(|m| self.memory_mib >= m)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} vCPUs, {}", self.vcpus, mib(self.memory_mib))
    }
}

fn mib(m: u64) -> String {
    if m.is_multiple_of(1024) {
        format!("{} GiB", m / 1024)
    } else {
        format!("{m} MiB")
    }
}

/// An instance a job may get: a type of one of its pools.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub pool: PoolName,
    pub instance_type: InstanceType,
    /// What one costs per hour on demand (the pool's price for the type).
    pub price_per_hour: Money,
    /// What one has, if anybody knows (the driver's offering).
    pub shape: Option<Shape>,
    /// What one costs per hour on spot, where the pool launches spot.
    pub spot_price: Option<Money>,
    /// The cloud has none now (a capacity back-off holds the type).
    pub out_of_capacity: bool,
}

/// Where an instance is bought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Market {
    OnDemand,
    Spot,
}

impl Market {
    pub fn as_str(self) -> &'static str {
        match self {
            Market::OnDemand => "on_demand",
            Market::Spot => "spot",
        }
    }
}

/// The instance chosen for a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fit {
    pub pool: PoolName,
    pub instance_type: InstanceType,
    pub market: Market,
    /// What it costs per hour on its market.
    pub price_per_hour: Money,
}

/// Why no instance will do for a job now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfit {
    /// Its pools name no instance type at all.
    NoTypes,
    /// No type of its pools is big enough; the biggest known, if any.
    TooBig {
        asked: Resources,
        biggest: Option<(InstanceType, Shape)>,
    },
    /// It asks for a size, and the driver can say the size of none of
    /// its pools' types (these). Where some sizes are known and too small,
    /// [`Unfit::TooBig`] is the answer.
    SizeUnknown {
        asked: Resources,
        unknown: Vec<InstanceType>,
    },
    /// Types that fit exist, but the cloud has none of them now.
    NoCapacity { types: Vec<InstanceType> },
}

impl Unfit {
    /// Whether waiting can help: capacity comes back; a size does not
    /// grow (a pool changed can, and the job is looked at again then).
    pub fn is_transient(&self) -> bool {
        matches!(self, Unfit::NoCapacity { .. })
    }
}

fn asked(r: &Resources) -> String {
    let mut parts = Vec::new();
    if let Some(v) = r.vcpus {
        parts.push(format!("{v} vCPUs"));
    }
    if let Some(m) = r.memory_mib {
        parts.push(mib(m));
    }
    parts.join(" and ")
}

fn names(types: &[InstanceType]) -> String {
    types
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unfit::NoTypes => f.write_str("its pools name no instance type"),
            Unfit::TooBig { asked: a, biggest } => {
                write!(f, "no instance type of its pools has {}", asked(a))?;
                if let Some((ty, shape)) = biggest {
                    write!(f, " (the biggest: {ty}, {shape})")?;
                }
                Ok(())
            }
            Unfit::SizeUnknown { asked: a, unknown } => write!(
                f,
                "it asks for {}, and the driver cannot say how big {} {}; ask for less, or run it on a pool whose types the driver knows",
                asked(a),
                names(unknown),
                if unknown.len() == 1 { "is" } else { "are" }
            ),
            Unfit::NoCapacity { types } => write!(
                f,
                "no capacity for {} now",
                names(types)
            ),
        }
    }
}

/// Whether an instance of `shape` fits `asked`: one whose size nobody
/// knows fits only a job that asks for no size.
fn fits_shape(shape: Option<Shape>, asked: &Resources) -> bool {
    match shape {
        Some(shape) => shape.fits(asked),
        None => asked.vcpus.is_none() && asked.memory_mib.is_none(),
    }
}

/// The cheapest of `offers` that fits `asked`, on spot where `spot` asks
/// for it and the offer has a spot price (else on demand); among equal
/// prices, the first offered. A type whose size is unknown fits only a job
/// that asks for no size.
pub fn cheapest_fit<'a>(
    asked: &Resources,
    spot: bool,
    offers: impl IntoIterator<Item = &'a Offer> + Clone,
) -> Result<Fit, Unfit> {
    let fits = |o: &Offer| fits_shape(o.shape, asked);
    let priced = |o: &Offer| match (spot, o.spot_price) {
        (true, Some(price)) => (price, Market::Spot),
        _ => (o.price_per_hour, Market::OnDemand),
    };
    let mut any = false;
    let mut fitting = false;
    let mut best: Option<(&Offer, Money, Market)> = None;
    for o in offers.clone() {
        any = true;
        if !fits(o) {
            continue;
        }
        fitting = true;
        if o.out_of_capacity {
            continue;
        }
        let (price, market) = priced(o);
        if best.as_ref().is_none_or(|(_, p, _)| price < *p) {
            best = Some((o, price, market));
        }
    }
    if let Some((o, price_per_hour, market)) = best {
        return Ok(Fit {
            pool: o.pool.clone(),
            instance_type: o.instance_type.clone(),
            market,
            price_per_hour,
        });
    }
    if !any {
        return Err(Unfit::NoTypes);
    }
    let mut types: Vec<InstanceType> = Vec::new();
    let mut add = |ty: &InstanceType| {
        if !types.contains(ty) {
            types.push(ty.clone());
        }
    };
    if fitting {
        offers
            .into_iter()
            .filter(|o| fits(o))
            .for_each(|o| add(&o.instance_type));
        return Err(Unfit::NoCapacity { types });
    }
    let mut biggest: Option<(InstanceType, Shape)> = None;
    for o in offers {
        match o.shape {
            None => add(&o.instance_type),
            Some(s) => {
                if biggest
                    .as_ref()
                    .is_none_or(|(_, b)| (s.vcpus, s.memory_mib) > (b.vcpus, b.memory_mib))
                {
                    biggest = Some((o.instance_type.clone(), s));
                }
            }
        }
    }
    match biggest {
        None => Err(Unfit::SizeUnknown {
            asked: *asked,
            unknown: types,
        }),
        Some(biggest) => Err(Unfit::TooBig {
            asked: *asked,
            biggest: Some(biggest),
        }),
    }
}

/// A queued job as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting<'a> {
    pub key: QueueKey,
    pub resources: Resources,
    pub spot: bool,
    /// The pools it may run on (the default pool already put in for a job
    /// that names none).
    pub pools: &'a [PoolName],
}

/// What a scheduling pass decides for one queued job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start an attempt on this instance now.
    Start(Fit),
    /// Not now; why, as its status says.
    Wait(String),
    /// It fits, but waits for an instance to be free: `place` of `of`
    /// in that line (kept apart, so a reason stored does not change with
    /// every pass).
    InLine { place: usize, of: usize },
}

/// What a job that waits in line for an instance is told.
pub const IN_LINE: &str = "waiting for an instance to be free";

impl Decision {
    /// Why it waits, with its place in line; None for a start.
    pub fn reason(&self) -> Option<String> {
        match self {
            Decision::Start(_) => None,
            Decision::Wait(why) => Some(why.clone()),
            Decision::InLine { place, of } => Some(format!("{IN_LINE}: position {place} of {of}")),
        }
    }
}

/// One scheduling pass (seed 002's): in queue order, each job gets the
/// cheapest instance that fits among its pools' `offers`, while `slots`
/// last (the instances that may start now: the quota left, say); the rest
/// say why they wait, a job that would fit with its place in that line.
pub fn schedule(
    queue: &[Waiting<'_>],
    offers: &std::collections::BTreeMap<PoolName, Vec<Offer>>,
    mut slots: usize,
) -> Vec<(u64, Decision)> {
    let mut order: Vec<&Waiting<'_>> = queue.iter().collect();
    order.sort_by_key(|w| w.key);
    let mut decisions: Vec<(u64, Decision)> = Vec::with_capacity(order.len());
    // Jobs that fit but found no slot: their places in line, filled in
    // once the line's length is known.
    let mut in_line: Vec<usize> = Vec::new();
    for w in order {
        let id = w.key.id;
        if let Some(missing) = w.pools.iter().find(|p| !offers.contains_key(*p)) {
            decisions.push((id, Decision::Wait(format!("pool {missing} does not exist"))));
            continue;
        }
        let candidates = w.pools.iter().flat_map(|p| offers[p].iter());
        match cheapest_fit(&w.resources, w.spot, candidates) {
            Ok(fit) if slots > 0 => {
                slots -= 1;
                decisions.push((id, Decision::Start(fit)));
            }
            Ok(_) => {
                in_line.push(decisions.len());
                decisions.push((id, Decision::InLine { place: 0, of: 0 }));
            }
            Err(why) => decisions.push((id, Decision::Wait(why.to_string()))),
        }
    }
    let line = in_line.len();
    for (place, at) in in_line.into_iter().enumerate() {
        decisions[at].1 = Decision::InLine {
            place: place + 1,
            of: line,
        };
    }
    decisions
}

/// An instance a pool keeps booted and idle for jobs (its `idle_nodes`).
#[derive(Debug, Clone, PartialEq)]
pub struct WarmNode {
    pub pool: PoolName,
    pub instance_type: InstanceType,
    /// What it has, if anybody knows.
    pub shape: Option<Shape>,
}

/// Which queued jobs take a warm instance rather than wait for one to
/// boot: in queue order, each the first of `warm` (given oldest first) in
/// one of its pools that fits it. Returns each job with the index of its
/// instance in `warm`; the others go to [`schedule`].
pub fn take_warm(queue: &[Waiting<'_>], warm: &[WarmNode]) -> Vec<(u64, usize)> {
    let mut order: Vec<&Waiting<'_>> = queue.iter().collect();
    order.sort_by_key(|w| w.key);
    let mut taken = vec![false; warm.len()];
    let mut out = Vec::new();
    for w in order {
        if taken.iter().all(|t| *t) {
            break;
        }
        let found = warm.iter().enumerate().position(|(i, node)| {
            !taken[i] && w.pools.contains(&node.pool) && fits_shape(node.shape, &w.resources)
        });
        if let Some(i) = found {
            taken[i] = true;
            out.push((w.key.id, i));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(pool: &str, ty: &str, price: &str, shape: Option<(u32, u64)>) -> Offer {
        Offer {
            pool: PoolName::new(pool).unwrap(),
            instance_type: InstanceType::new(ty).unwrap(),
            price_per_hour: price.parse().unwrap(),
            shape: shape.map(|(vcpus, memory_mib)| Shape { vcpus, memory_mib }),
            spot_price: None,
            out_of_capacity: false,
        }
    }

    fn ask(vcpus: Option<u32>, memory_gib: Option<u64>) -> Resources {
        Resources {
            vcpus,
            memory_mib: memory_gib.map(|g| g * 1024),
            disk_gib: None,
        }
    }

    fn offers() -> Vec<Offer> {
        vec![
            offer("general", "m5.large", "0.096", Some((2, 8192))),
            offer("general", "m5.xlarge", "0.192", Some((4, 16384))),
            offer("general", "t3.small", "0.0208", Some((2, 2048))),
            offer("big", "r5.2xlarge", "0.504", Some((8, 65536))),
            offer("big", "c5.4xlarge", "0.68", Some((16, 32768))),
        ]
    }

    #[test]
    fn the_cheapest_type_that_fits_is_chosen() {
        // (vcpus, memory GiB) asked → the type chosen.
        let table = [
            ((None, None), "t3.small"),
            ((Some(2), None), "t3.small"),
            ((Some(2), Some(4)), "m5.large"),
            ((None, Some(8)), "m5.large"),
            ((Some(3), None), "m5.xlarge"),
            ((Some(4), Some(32)), "r5.2xlarge"),
            ((Some(12), None), "c5.4xlarge"),
        ];
        for ((vcpus, memory), expected) in table {
            let fit = cheapest_fit(&ask(vcpus, memory), false, &offers()).unwrap();
            assert_eq!(fit.instance_type.as_str(), expected, "{vcpus:?} {memory:?}");
            assert_eq!(fit.market, Market::OnDemand);
        }
    }

    #[test]
    fn spot_is_taken_where_the_pool_has_it_and_cheaper_wins() {
        let mut o = offers();
        // m5.large on spot is cheaper than t3.small on demand.
        o[0].spot_price = Some("0.02".parse().unwrap());
        let fit = cheapest_fit(&ask(None, None), true, &o).unwrap();
        assert_eq!(
            (fit.instance_type.as_str(), fit.market),
            ("m5.large", Market::Spot)
        );
        assert_eq!(fit.price_per_hour, "0.02".parse().unwrap());
        // Not asked for spot: on demand, whatever the spot price.
        let fit = cheapest_fit(&ask(None, None), false, &o).unwrap();
        assert_eq!(
            (fit.instance_type.as_str(), fit.market),
            ("t3.small", Market::OnDemand)
        );
    }

    #[test]
    fn equal_prices_go_to_the_first_offered() {
        let o = vec![
            offer("a", "x.large", "0.10", Some((2, 4096))),
            offer("b", "y.large", "0.10", Some((2, 4096))),
        ];
        assert_eq!(
            cheapest_fit(&ask(None, None), false, &o)
                .unwrap()
                .pool
                .as_str(),
            "a"
        );
    }

    #[test]
    fn a_type_out_of_capacity_is_passed_over_and_said_when_none_is_left() {
        let mut o = offers();
        o[2].out_of_capacity = true;
        let fit = cheapest_fit(&ask(Some(2), None), false, &o).unwrap();
        assert_eq!(fit.instance_type.as_str(), "m5.large");
        for offer in &mut o {
            offer.out_of_capacity = true;
        }
        let why = cheapest_fit(&ask(Some(12), None), false, &o).unwrap_err();
        assert_eq!(why.to_string(), "no capacity for c5.4xlarge now");
        assert!(why.is_transient());
    }

    #[test]
    fn nothing_big_enough_names_the_biggest() {
        let why = cheapest_fit(&ask(Some(64), Some(256)), false, &offers()).unwrap_err();
        assert_eq!(
            why.to_string(),
            "no instance type of its pools has 64 vCPUs and 256 GiB (the biggest: c5.4xlarge, 16 vCPUs, 32 GiB)"
        );
        assert!(!why.is_transient());
    }

    #[test]
    fn a_pass_starts_jobs_in_queue_order_while_slots_last() {
        fn job(id: u64, priority: i32, pools: &[PoolName], vcpus: Option<u32>) -> Waiting<'_> {
            Waiting {
                key: QueueKey {
                    priority,
                    submitted_at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
                    id,
                },
                resources: ask(vcpus, None),
                spot: false,
                pools,
            }
        }
        let pool = |n: &str| PoolName::new(n).unwrap();
        let general = [pool("general")];
        let big = [pool("big")];
        let both = [pool("general"), pool("big")];
        let nowhere = [pool("nowhere")];
        let mut offers: std::collections::BTreeMap<PoolName, Vec<Offer>> = Default::default();
        for o in super::tests::offers() {
            offers.entry(o.pool.clone()).or_default().push(o);
        }
        let (general, big, both, nowhere) = (&general[..], &big[..], &both[..], &nowhere[..]);
        let queue = [
            job(1, 0, general, None),
            job(2, 5, both, Some(12)),
            job(3, 0, general, Some(64)),
            job(4, 0, nowhere, None),
            job(5, 0, big, None),
            job(6, 0, general, Some(2)),
        ];
        let decisions = schedule(&queue, &offers, 2);
        let said: Vec<(u64, String)> = decisions
            .iter()
            .map(|(id, d)| {
                (
                    *id,
                    match d {
                        Decision::Start(fit) => format!("start {}", fit.instance_type),
                        d => d.reason().unwrap(),
                    },
                )
            })
            .collect();
        assert_eq!(
            said,
            [
                (2, "start c5.4xlarge".to_owned()),
                (1, "start t3.small".to_owned()),
                (
                    3,
                    "no instance type of its pools has 64 vCPUs (the biggest: m5.xlarge, 4 vCPUs, 16 GiB)"
                        .to_owned()
                ),
                (4, "pool nowhere does not exist".to_owned()),
                (5, "waiting for an instance to be free: position 1 of 2".to_owned()),
                (6, "waiting for an instance to be free: position 2 of 2".to_owned()),
            ]
        );
    }

    #[test]
    fn warm_instances_go_to_the_first_jobs_in_line_that_fit_them() {
        fn job(id: u64, priority: i32, pools: &[PoolName], vcpus: Option<u32>) -> Waiting<'_> {
            Waiting {
                key: QueueKey {
                    priority,
                    submitted_at: chrono::DateTime::from_timestamp(1_800_000_000 + id as i64, 0)
                        .unwrap(),
                    id,
                },
                resources: ask(vcpus, None),
                spot: true,
                pools,
            }
        }
        let pool = |n: &str| PoolName::new(n).unwrap();
        let warm = |p: &str, ty: &str, shape: Option<(u32, u64)>| WarmNode {
            pool: pool(p),
            instance_type: InstanceType::new(ty).unwrap(),
            shape: shape.map(|(vcpus, memory_mib)| Shape { vcpus, memory_mib }),
        };
        let (general, big, local) = ([pool("general")], [pool("big")], [pool("local")]);
        let (general, big, local) = (&general[..], &big[..], &local[..]);
        let nodes = [
            warm("general", "m5.large", Some((2, 8192))),
            warm("general", "m5.large", Some((2, 8192))),
            warm("local", "local.small", None),
        ];
        let queue = [
            // Too big for the warm m5.large: left for the scheduler.
            job(1, 0, general, Some(4)),
            job(2, 0, general, Some(2)),
            // No warm instance in its pool.
            job(3, 0, big, None),
            // First in line by priority, though submitted last.
            job(4, 9, general, None),
            // A type of unknown size serves only a job that asks none.
            job(5, 0, local, Some(1)),
            job(6, 0, local, None),
            // Both general ones are taken.
            job(7, 0, general, None),
        ];
        assert_eq!(take_warm(&queue, &nodes), [(4, 0), (2, 1), (6, 2)]);
        assert_eq!(take_warm(&queue, &[]), []);
    }

    #[test]
    fn a_type_of_unknown_size_serves_only_jobs_that_ask_none() {
        let o = vec![offer("local", "local.small", "0", None)];
        let fit = cheapest_fit(&ask(None, None), false, &o).unwrap();
        assert_eq!(fit.instance_type.as_str(), "local.small");
        let why = cheapest_fit(&ask(Some(2), None), false, &o).unwrap_err();
        assert_eq!(
            why,
            Unfit::SizeUnknown {
                asked: ask(Some(2), None),
                unknown: vec![InstanceType::new("local.small").unwrap()]
            }
        );
        assert!(
            why.to_string()
                .contains("cannot say how big local.small is"),
            "{why}"
        );
        assert_eq!(
            cheapest_fit(&ask(None, None), false, &[]).unwrap_err(),
            Unfit::NoTypes
        );
    }
}
