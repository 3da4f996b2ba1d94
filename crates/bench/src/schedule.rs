//! `flotilla-bench schedule`: one scheduling pass over a long queue.
//!
//! Issue 13's target: a pass over 10,000 queued jobs and 100 instance
//! types in at most 20 ms. The pass ([`flotilla_domain::schedule`]) puts
//! the queue in order, finds each job the cheapest type that fits among
//! its pools' offers while instance slots last, and says why the rest
//! wait. The queue here: `--jobs` jobs of mixed priorities and ages, each
//! asking a size (or none) and naming one or two of `--pools` pools, each
//! pool offering `--types-per-pool` types of known shape (some with a
//! spot price, some out of capacity); `--slots` instances may start. The
//! baseline, in the same run: sorting the queue's keys alone, which any
//! pass over it costs.
//!
//! The exit status is 1 if the target is missed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use flotilla_domain::{
    schedule, Decision, InstanceType, Money, Offer, PoolName, QueueKey, Resources, Shape, Waiting,
};

use crate::machine::{self, Machine};
use crate::report::{fmt_duration, fmt_kib, max, percentile, Report, Verdict};

#[derive(Debug, clap::Args)]
pub struct ScheduleArgs {
    /// Queued jobs.
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Pools.
    #[arg(long, default_value_t = 10)]
    pools: usize,
    /// Instance types each pool offers.
    #[arg(long, default_value_t = 10)]
    types_per_pool: usize,
    /// Instances that may start in one pass.
    #[arg(long, default_value_t = 500)]
    slots: usize,
    /// Passes timed.
    #[arg(long, default_value_t = 200)]
    passes: usize,
}

/// A small deterministic generator (the same queue every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below.max(1)
    }
}

fn offers(args: &ScheduleArgs, rng: &mut Lcg) -> Result<BTreeMap<PoolName, Vec<Offer>>> {
    let mut by_pool = BTreeMap::new();
    for p in 0..args.pools {
        let pool = PoolName::new(format!("pool-{p}"))?;
        let mut offers = Vec::new();
        for t in 0..args.types_per_pool {
            let vcpus = 2u32 << (t % 6);
            let memory_mib = u64::from(vcpus) * 1024 * (1 + rng.next(8));
            let micros = i64::from(vcpus) * 24_000 + rng.next(20_000) as i64;
            offers.push(Offer {
                pool: pool.clone(),
                instance_type: InstanceType::new(format!("f{p}t{t}.{vcpus}xlarge"))?,
                price_per_hour: Money::from_micros(micros),
                shape: Some(Shape { vcpus, memory_mib }),
                spot_price: (rng.next(2) == 0).then(|| Money::from_micros(micros / 3)),
                out_of_capacity: rng.next(10) == 0,
            });
        }
        by_pool.insert(pool, offers);
    }
    Ok(by_pool)
}

pub fn run(args: ScheduleArgs) -> Result<()> {
    let machine = Machine::read();
    machine.print_header("flotilla-bench schedule");
    let types = args.pools * args.types_per_pool;
    println!(
        "- run: {} queued jobs, {} pools × {} types = {types} instance types, {} slots, {} passes",
        args.jobs, args.pools, args.types_per_pool, args.slots, args.passes
    );
    println!();
    let mut rng = Lcg(42);
    let offers = offers(&args, &mut rng)?;
    let names: Vec<PoolName> = offers.keys().cloned().collect();
    let start = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("a time");
    let pools_of: Vec<Vec<PoolName>> = (0..args.jobs)
        .map(|_| {
            let first = names[rng.next(names.len() as u64) as usize].clone();
            let second = names[rng.next(names.len() as u64) as usize].clone();
            if rng.next(3) == 0 && second != first {
                vec![first, second]
            } else {
                vec![first]
            }
        })
        .collect();
    let queue: Vec<Waiting<'_>> = pools_of
        .iter()
        .enumerate()
        .map(|(i, pools)| Waiting {
            key: QueueKey {
                priority: rng.next(5) as i32 - 2,
                submitted_at: start + chrono::Duration::seconds(rng.next(86_400) as i64),
                id: i as u64 + 1,
            },
            resources: Resources {
                vcpus: (rng.next(3) != 0).then(|| 1 << rng.next(8)),
                memory_mib: (rng.next(2) == 0).then(|| 1024 << rng.next(8)),
                disk_gib: None,
            },
            spot: rng.next(2) == 0,
            pools,
        })
        .collect();

    let decisions = schedule(&queue, &offers, args.slots);
    let started = decisions
        .iter()
        .filter(|(_, d)| matches!(d, Decision::Start(_)))
        .count();
    let in_line = decisions
        .iter()
        .filter(|(_, d)| matches!(d, Decision::InLine { .. }))
        .count();
    ensure!(decisions.len() == args.jobs, "a decision per job");
    ensure!(
        started
            == args
                .slots
                .min(args.jobs - (decisions.len() - started - in_line)),
        "every slot used while jobs fit"
    );

    let time = |f: &mut dyn FnMut()| -> Vec<Duration> {
        (0..args.passes)
            .map(|_| {
                let at = Instant::now();
                f();
                at.elapsed()
            })
            .collect()
    };
    let passes = time(&mut || {
        std::hint::black_box(schedule(&queue, &offers, args.slots));
    });
    let sorts = time(&mut || {
        let mut keys: Vec<QueueKey> = queue.iter().map(|w| w.key).collect();
        keys.sort();
        std::hint::black_box(keys);
    });

    let mut report = Report::default();
    let target = Duration::from_millis(20);
    let p50 = percentile(&passes, 50.0);
    report.row(
        "pass",
        format!("{} jobs × {types} types: p50 / p99 / max", args.jobs),
        format!(
            "{} / {} / {}",
            fmt_duration(p50),
            fmt_duration(percentile(&passes, 99.0)),
            fmt_duration(max(&passes))
        ),
        "≤ 20 ms",
        Verdict::check(p50 <= target),
    );
    report.info(
        "pass",
        "decisions: started / waiting for a slot / waiting for another reason",
        format!(
            "{started} / {in_line} / {}",
            decisions.len() - started - in_line
        ),
    );
    report.info(
        "baseline",
        "sorting the queue's keys alone: p50 / p99",
        format!(
            "{} / {}",
            fmt_duration(percentile(&sorts, 50.0)),
            fmt_duration(percentile(&sorts, 99.0))
        ),
    );
    report.info("memory", "peak RSS", fmt_kib(machine::peak_rss_kib()));
    println!("{}", report.markdown());
    ensure!(!report.failed(), "a target was missed");
    Ok(())
}
