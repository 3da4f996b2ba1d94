//! `flotilla-bench rollout`: a pool's new version rolled out to many
//! clusters on the fake cloud with zero boot delay.
//!
//! `--clusters` clusters of `--nodes` nodes each are deployed on a pool
//! written through the front door and left to become ready; then the pool
//! is applied again with other init data, which outdates every node. The
//! benchmark measures the wall time until every cluster holds only nodes
//! of the new version (and nothing else is left in the cloud), the create
//! and destroy calls the rollout made per cluster against the bound
//! ⌈surge / max_batch⌉ + 2 per cluster per wave, and the fewest ready
//! nodes any cluster had while it rolled, sampled every 20 ms, which must
//! never be below the wanted count. The baseline, in the same run: the
//! wall time of the first deploy of the same clusters.
//!
//! The exit status is 1 if a target is missed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use flotilla_cloud::fake::FakeConfig;
use flotilla_control::{ApplyPool, Control, Deploy};
use flotilla_domain::{Caller, ClusterName, NodeState, Rollout};
use flotilla_engine::EngineConfig;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::machine;
use crate::report::{fmt_duration, fmt_kib, Report, Verdict};
use crate::tap::CountingStore;

#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    #[arg(long, default_value_t = 10)]
    nodes: u32,
}

fn pool(init: &str) -> serde_json::Value {
    json!({"driver": crate::DRIVER, "instance_type": "fake.small", "init_data": init})
}

pub fn run(args: RolloutArgs) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(args))
}

async fn bench(args: RolloutArgs) -> Result<()> {
    machine::Machine::read().print_header("rollout: a pool's new version replaces every node");
    let store = Arc::new(CountingStore::new(Arc::new(
        flotilla_store::MemoryStore::new(),
    )));
    let fake = FakeConfig::default();
    let max_batch = fake.max_batch;
    let mut registry = Registry::default();
    let (cloud, tap, default_pool, pools) = crate::fake_wiring(&store, fake, &mut registry).await?;
    let config = EngineConfig {
        limits: flotilla_domain::Limits {
            max_nodes: args.nodes.max(100),
            ..flotilla_domain::Limits::default()
        },
        ..EngineConfig::default()
    };
    let (engine, tasks, _registry) = crate::start_engine(
        config,
        store.clone(),
        crate::DRIVER,
        &tap,
        pools,
        default_pool,
        registry,
    )
    .await?;
    let control = Control::new(engine.clone(), crate::fake_catalog());
    let admin = Caller::local_operator();
    let apply = |init: &'static str| ApplyPool {
        pool: "web".into(),
        document: pool(init),
        expected_version: None,
    };
    control.run(&admin, apply("v1")).await?;
    let names: Vec<ClusterName> = (0..args.clusters)
        .map(|i| ClusterName::new(format!("r{i:05}")))
        .collect::<Result<_, _>>()?;
    let want = args.nodes as usize;
    let all_ready = |outdated_ok: bool| {
        names.iter().all(|c| {
            let v = engine.view(c);
            v.nodes.len() == want
                && v.nodes
                    .iter()
                    .all(|n| n.state == NodeState::Ready && (outdated_ok || !n.outdated))
        })
    };

    let started = Instant::now();
    for c in &names {
        control
            .run(
                &admin,
                Deploy {
                    cluster: c.clone(),
                    node_capacity: i64::from(args.nodes),
                    time_to_live: 3600,
                    is_public: None,
                    pool: Some("web".into()),
                    workload: None,
                },
            )
            .await?;
    }
    while !all_ready(true) {
        ensure!(
            started.elapsed() < Duration::from_secs(600),
            "deploy did not settle"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deploy_time = started.elapsed();

    let before = cloud.stats();
    let destroys_before = tap.destroy_calls();
    let started = Instant::now();
    control.run(&admin, apply("v2")).await?;
    let mut fewest_ready = usize::MAX;
    let mut samples = 0u64;
    loop {
        samples += 1;
        let mut done = true;
        for c in &names {
            let v = engine.view(c);
            let ready = v
                .nodes
                .iter()
                .filter(|n| n.state == NodeState::Ready)
                .count();
            fewest_ready = fewest_ready.min(ready);
            done &= v.rollout.is_none()
                && v.nodes.len() == want
                && v.nodes
                    .iter()
                    .all(|n| n.state == NodeState::Ready && !n.outdated);
        }
        if done && cloud.instance_count() == names.len() * want {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(900),
            "rollout did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rollout_time = started.elapsed();
    let after = cloud.stats();
    tasks.shutdown().await;

    let creates = after.creates - before.creates;
    let destroys = tap.destroy_calls() - destroys_before;
    let made = after.instances_created - before.instances_created;
    let surge = Rollout::default().budgets(args.nodes).surge;
    let waves = args.nodes.div_ceil(surge.max(1)) as u64;
    let per_wave = u64::from(surge.div_ceil(max_batch)) + 2;
    let bound = waves * per_wave;
    let per_cluster = (creates + destroys) as f64 / names.len() as f64;

    let mut report = Report::default();
    report.info(
        "setup",
        "clusters x nodes; rollout budget",
        format!(
            "{} x {} on the fake cloud (zero boot delay, max_batch {max_batch}); surge {surge}, {waves} waves",
            names.len(),
            args.nodes
        ),
    );
    report.info(
        "baseline",
        "first deploy of the same clusters, wall",
        fmt_duration(deploy_time),
    );
    report.info(
        "rollout",
        "pool applied to every node replaced, wall",
        fmt_duration(rollout_time),
    );
    report.row(
        "rollout",
        "create + destroy calls per cluster",
        format!("{per_cluster:.1} ({creates} creates, {destroys} destroys)"),
        format!("≤ {bound} ({waves} waves × (⌈{surge}/{max_batch}⌉ + 2))"),
        Verdict::check(per_cluster <= bound as f64),
    );
    report.row(
        "rollout",
        "nodes made",
        made.to_string(),
        format!("= {} (one per outdated node)", names.len() * want),
        Verdict::check(made as usize == names.len() * want),
    );
    report.row(
        "rollout",
        format!("fewest ready nodes in any cluster ({samples} samples of all)"),
        fewest_ready.to_string(),
        format!("≥ {want}"),
        Verdict::check(fewest_ready >= want),
    );
    report.info("memory", "peak RSS", fmt_kib(machine::peak_rss_kib()));
    println!("{}", report.markdown());
    ensure!(!report.failed(), "a target was missed");
    Ok(())
}
