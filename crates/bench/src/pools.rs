//! `flotilla-bench pools`: checking a pool as it is written.
//!
//! Every pool written through the API (and every `[pools.NAME]` of the
//! config file) passes one check: its driver's JSON Schema, what a schema
//! cannot say, then the driver's own checks ([`PoolCatalog::check`]). The
//! benchmark times that check on an ec2 pool with a driver section, init
//! data with placeholders and tags (the largest a pool gets), on a local
//! pool, and on an ec2 pool with five problems (every problem is found,
//! so a bad pool costs the most), each `--iterations` times. The baseline,
//! in the same run: parsing the same document into `PoolDocument` with
//! serde alone, which any reading of it costs.
//!
//! The exit status is 1 if a target is missed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use flotilla_control::{NoSection, PoolCatalog, PoolDriver};
use flotilla_domain::{PoolDocument, PoolName, PoolSource, PoolSpec, Problem};
use flotilla_driver_ec2::{Ec2Config, Ec2PoolOptions};
use serde_json::{json, Value};

use crate::machine::{self, Machine};
use crate::report::{fmt_duration, fmt_kib, max, percentile, Report, Verdict};

#[derive(Debug, clap::Args)]
pub struct PoolsArgs {
    /// Checks timed per document.
    #[arg(long, default_value_t = 20_000)]
    iterations: usize,
}

/// The ec2 driver as the server sees it (the binary's adapter, for the
/// benchmark).
struct Ec2Rules(Ec2Config);

impl PoolDriver for Ec2Rules {
    fn kind(&self) -> &'static str {
        "ec2"
    }
    fn section(&self) -> Option<(&'static str, Value)> {
        Some(("ec2", Ec2PoolOptions::schema()))
    }
    fn check(&self, name: &PoolName, spec: &PoolSpec) -> Vec<Problem> {
        self.0.check_pool(name, spec)
    }
}

fn ec2_pool() -> Value {
    json!({
        "driver": "aws",
        "instance_type": "m5.large",
        "image": "ami-0123456789abcdef0",
        "init_data": "#!/bin/sh\necho {{cluster}} {{pool}} {{instance_type}} > /etc/node\n",
        "tags": {"team": "physics", "cost-centre": "42"},
        "price_per_hour": "0.096",
        "ssh_user": "ec2-user",
        "description": "general-purpose nodes",
        "owners": ["olga", "org:physics"],
        "ec2": {
            "subnets": ["subnet-1", "subnet-2"],
            "security_groups": ["sg-1"],
            "spot": {"max_price": "0.05", "fallback_on_demand": true},
            "health_check": {"port": 8080, "path": "/ready"}
        }
    })
}

fn local_pool() -> Value {
    json!({"driver": "local", "instance_type": "local.small", "price_per_hour": "0.01"})
}

fn bad_pool() -> Value {
    json!({
        "driver": "aws", "instance_type": "m5 large", "allow_exec": "yes",
        "colour": "red", "owners": [7], "ec2": {"spot": {"max_prize": "1"}}
    })
}

/// How long each of `iterations` calls of `f` took.
fn time(iterations: usize, mut f: impl FnMut()) -> Vec<Duration> {
    (0..iterations)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect()
}

pub fn run(args: PoolsArgs) -> Result<()> {
    let machine = Machine::read();
    machine.print_header("flotilla-bench pools");
    println!("- run: {} checks per document", args.iterations);
    println!();
    let catalog = PoolCatalog::new(BTreeMap::from([
        (
            "aws".to_owned(),
            Arc::new(Ec2Rules(Ec2Config::new("us-west-2"))) as Arc<dyn PoolDriver>,
        ),
        (
            "local".to_owned(),
            Arc::new(NoSection("local")) as Arc<dyn PoolDriver>,
        ),
    ]));
    let name = PoolName::new("general")?;
    let mut report = Report::default();
    let target = Duration::from_millis(1);
    for (label, document, valid) in [
        ("ec2 pool, every field", ec2_pool(), true),
        ("local pool", local_pool(), true),
        ("ec2 pool with 5 problems", bad_pool(), false),
    ] {
        let outcome = catalog.check(&name, &document, PoolSource::Config);
        ensure!(
            outcome.is_ok() == valid,
            "{label}: expected {}, got {outcome:?}",
            if valid { "valid" } else { "problems" }
        );
        let checks = time(args.iterations, || {
            std::hint::black_box(catalog.check(&name, &document, PoolSource::Config).is_ok());
        });
        let baseline = time(args.iterations, || {
            std::hint::black_box(serde_json::from_value::<PoolDocument>(document.clone()).is_ok());
        });
        let p99 = percentile(&checks, 99.0);
        report.row(
            "check",
            format!("{label}: p50 / p99 / max"),
            format!(
                "{} / {} / {}",
                fmt_duration(percentile(&checks, 50.0)),
                fmt_duration(p99),
                fmt_duration(max(&checks))
            ),
            "p99 ≤ 1 ms",
            Verdict::check(p99 <= target),
        );
        report.info(
            "baseline",
            format!("{label}: serde parse alone, p50 / p99"),
            format!(
                "{} / {}",
                fmt_duration(percentile(&baseline, 50.0)),
                fmt_duration(percentile(&baseline, 99.0))
            ),
        );
        if !valid {
            let problems = outcome.err().unwrap_or_default();
            report.info(
                "check",
                format!("{label}: problems found"),
                problems.len().to_string(),
            );
        }
    }
    report.info("memory", "peak RSS", fmt_kib(machine::peak_rss_kib()));
    println!("{}", report.markdown());
    ensure!(!report.failed(), "a target was missed");
    Ok(())
}
