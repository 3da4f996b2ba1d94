//! The real binary end to end on the `ec2` driver, against moto's EC2
//! server on loopback: `flotilla serve` with an ec2 pool, driven by the
//! command line, killed with SIGKILL mid-deploy and restarted. Instances are
//! counted with the EC2 API itself (DescribeInstances on moto, unfiltered),
//! never from what flotilla reports, so a leak or a duplicate cannot hide.
//! moto changes states at once and keeps terminated instances listed, so
//! the count of every instance ever made shows duplicates made and then
//! destroyed too.

mod support;

#[allow(dead_code)]
#[path = "../../driver-ec2/tests/support/moto.rs"]
mod moto;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use aws_sdk_ec2::types::InstanceStateName;
use flotilla_cloud::{TAG_CLUSTER, TAG_INSTANCE_SET, TAG_INSTANCE_TYPE, TAG_POOL};
use flotilla_driver_ec2::{load_sdk_config, Credentials, Ec2Config, SharedCredentialsProvider};
use moto::{Moto, AMI};
use support::*;

const REGION: &str = "us-east-1";
const INSTANCE_TYPE: &str = "t3.micro";

/// A server config with one ec2 pool on `endpoint`.
fn config(endpoint: &str, max_batch: u32, ops_per_second: u32) -> String {
    format!(
        r#"
[limits]
min_ttl = "1s"
max_wait = "60s"
resync_interval = "1s"

[drivers.aws]
type = "ec2"
region = "{REGION}"
endpoint_url = "{endpoint}"
image = "{AMI}"
max_batch = {max_batch}
ops_per_second = {ops_per_second}

[pools.default]
driver = "aws"
instance_type = "{INSTANCE_TYPE}"
[pools.default.tags]
team = "e2e"
"#
    )
}

/// Starts the server with dummy credentials in its environment and no AWS
/// profile files, so the SDK's standard chain finds them there and never
/// asks the instance metadata address.
fn start(dir: &Path, config_text: &str) -> Server {
    start_at(dir, config_text, "127.0.0.1:0")
}

/// [`start`], listening on `listen`.
fn start_at(dir: &Path, config_text: &str, listen: &str) -> Server {
    let missing = dir.join("no-aws-files");
    let missing = missing.to_str().unwrap();
    Server::start_listening(
        dir,
        config_text,
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", REGION),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", missing),
            ("AWS_SHARED_CREDENTIALS_FILE", missing),
        ],
        listen,
    )
}

/// What the EC2 API says, asked directly.
struct Ec2 {
    rt: tokio::runtime::Runtime,
    client: aws_sdk_ec2::Client,
}

/// One instance as DescribeInstances shows it.
#[derive(Debug)]
struct Seen {
    id: String,
    state: InstanceStateName,
    instance_type: String,
    image: String,
    tags: BTreeMap<String, String>,
}

impl Ec2 {
    fn new(moto: &Moto) -> Ec2 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let settings = Ec2Config {
            endpoint_url: Some(moto.endpoint.clone()),
            ..Ec2Config::new(REGION)
        };
        let credentials = SharedCredentialsProvider::new(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "flotilla-tests",
        ));
        let sdk = rt.block_on(load_sdk_config(&settings, Some(credentials)));
        Ec2 {
            client: aws_sdk_ec2::Client::new(&sdk),
            rt,
        }
    }

    /// Every instance EC2 knows, in any state, whoever made it.
    fn all(&self) -> Vec<Seen> {
        self.rt.block_on(async {
            let mut pages = self.client.describe_instances().into_paginator().send();
            let mut seen = Vec::new();
            while let Some(page) = pages.next().await {
                for reservation in page.expect("DescribeInstances").reservations() {
                    for i in reservation.instances() {
                        seen.push(Seen {
                            id: i.instance_id().unwrap().to_owned(),
                            state: i.state().unwrap().name().unwrap().clone(),
                            instance_type: i.instance_type().unwrap().as_str().to_owned(),
                            image: i.image_id().unwrap_or_default().to_owned(),
                            tags: i
                                .tags()
                                .iter()
                                .map(|t| {
                                    (t.key().unwrap().to_owned(), t.value().unwrap().to_owned())
                                })
                                .collect(),
                        });
                    }
                }
            }
            seen
        })
    }

    /// Instances not shutting down or terminated.
    fn live(&self) -> Vec<Seen> {
        self.all()
            .into_iter()
            .filter(|i| {
                !matches!(
                    i.state,
                    InstanceStateName::ShuttingDown | InstanceStateName::Terminated
                )
            })
            .collect()
    }
}

/// Every live instance runs, is of the pool's type and image, and carries
/// the ownership tags (one instance set), the cluster's and the pool's.
/// Returns the instance set ID they carry.
fn check_instances(live: &[Seen], cluster: &str) -> String {
    let mut sets = BTreeSet::new();
    for i in live {
        assert_eq!(i.state, InstanceStateName::Running, "{i:?}");
        assert_eq!(i.instance_type, INSTANCE_TYPE, "{i:?}");
        assert_eq!(i.image, AMI, "{i:?}");
        let tag = |k: &str| i.tags.get(k).map(String::as_str);
        assert_eq!(tag(TAG_CLUSTER), Some(cluster), "{i:?}");
        assert_eq!(tag(TAG_INSTANCE_TYPE), Some(INSTANCE_TYPE), "{i:?}");
        assert_eq!(tag("team"), Some("e2e"), "{i:?}");
        let set = tag(TAG_INSTANCE_SET).expect("the ownership tag");
        assert!(!set.is_empty(), "{i:?}");
        sets.insert(set.to_owned());
    }
    assert!(sets.len() <= 1, "one instance set: {sets:?}");
    sets.into_iter().next().unwrap_or_default()
}

fn node_ids(status: &serde_json::Value) -> BTreeSet<String> {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

fn ids(seen: &[Seen]) -> BTreeSet<String> {
    seen.iter().map(|i| i.id.clone()).collect()
}

fn ok(out: &std::process::Output) {
    assert_eq!(
        code(out),
        0,
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn deploy_scale_destroy_on_ec2() {
    let moto = Moto::start();
    let ec2 = Ec2::new(&moto);
    let sandbox = Sandbox::new();
    let server = start(&sandbox.path(), &config(&moto.endpoint, 3, 50));

    // moto instances run at once; with no health check that is ready.
    ok(&server.cli(&["deploy", "demo", "--nodes", "4", "--ttl", "10m", "--wait"]));
    let live = ec2.live();
    assert_eq!(live.len(), 4, "{live:?}");
    let set = check_instances(&live, "demo");
    assert_eq!(ec2.all().len(), 4, "no instance made beyond the four");
    let status = server.status("demo");
    assert_eq!(status["state"], "running");
    assert_eq!(ready_nodes(&status), 4);
    assert_eq!(node_ids(&status), ids(&live), "flotilla's nodes are EC2's");
    for node in status["nodes"].as_array().unwrap() {
        assert!(node["address"].as_str().is_some(), "{node}");
    }

    ok(&server.cli(&["deploy", "demo", "--nodes", "2", "--ttl", "10m", "--wait"]));
    wait_for("two instances terminated", || ec2.live().len() == 2);
    let live = ec2.live();
    assert_eq!(check_instances(&live, "demo"), set);
    assert_eq!(ec2.all().len(), 4, "scaling down made nothing");
    wait_for("status shows two nodes", || {
        node_ids(&server.status("demo")) == ids(&ec2.live())
    });

    ok(&server.cli(&["destroy", "demo", "--wait"]));
    assert_eq!(server.status("demo")["state"], "not_running");
    wait_for("no instance left running", || ec2.live().is_empty());
    assert_eq!(ec2.all().len(), 4);
}

#[test]
fn sigkill_mid_deploy_on_ec2_then_restart_converges_without_duplicates() {
    let moto = Moto::start();
    let ec2 = Ec2::new(&moto);
    let sandbox = Sandbox::new();
    // Two instances per RunInstances call, two driver calls a second: the
    // six nodes take three spaced creates, so the kill lands among them.
    let config = config(&moto.endpoint, 2, 2);
    let server = start(&sandbox.path(), &config);
    ok(&server.cli(&["deploy", "crash", "--nodes", "6", "--ttl", "10m"]));
    wait_for("the first instances", || !ec2.all().is_empty());
    server.kill();
    let before = ec2.all().len();
    assert!(before <= 6, "{before} instances before the restart");
    eprintln!("{before} of the 6 instances existed when the server was killed");

    let server = start(&sandbox.path(), &config);
    wait_for("running again", || {
        let s = server.status("crash");
        s["state"] == "running" && ready_nodes(&s) == 6
    });
    // Give the engine a few resyncs to make a mistake, then count.
    std::thread::sleep(Duration::from_secs(3));
    let live = ec2.live();
    assert_eq!(live.len(), 6, "exactly the wanted instances: {live:?}");
    check_instances(&live, "crash");
    assert_eq!(
        ec2.all().len(),
        6,
        "no duplicate was made, not even one destroyed since ({before} before the restart)"
    );
    assert_eq!(node_ids(&server.status("crash")), ids(&live));

    ok(&server.cli(&["destroy", "crash", "--wait"]));
    wait_for("no instance left running", || ec2.live().is_empty());
    assert_eq!(server.status("crash")["state"], "not_running");
}

/// A second pool on the same driver, launching spot, with user data that
/// names the node's identity.
fn config_with_spot_pool(endpoint: &str) -> String {
    format!(
        r#"{}
[pools.spot]
driver = "aws"
instance_type = "{INSTANCE_TYPE}"
init_data = """
#!/bin/sh
echo {{{{cluster}}}} {{{{pool}}}} > /tmp/who
"""
[pools.spot.ec2]
spot = {{ max_price = "0.05" }}
"#,
        config(endpoint, 3, 50)
    )
}

#[test]
fn a_spot_pool_on_a_shared_driver_lists_its_price_and_launches_spot() {
    let moto = Moto::start();
    let ec2 = Ec2::new(&moto);
    let sandbox = Sandbox::new();
    let server = start(&sandbox.path(), &config_with_spot_pool(&moto.endpoint));

    let out = server.cli(&["--output", "json", "pools"]);
    ok(&out);
    let pools: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pools = pools["pools"].as_array().unwrap();
    let (default, spot) = (&pools[0], &pools[1]);
    assert_eq!(default["name"], "default");
    assert_eq!(default["default"], true);
    assert_eq!(default["driver"], "aws");
    assert_eq!(default["instance_type"], INSTANCE_TYPE);
    let t3_micro = serde_json::json!({"vcpus": 2, "memory_mib": 1024});
    assert_eq!(default["shape"], t3_micro, "{default}");
    assert!(default.get("spot_price").is_none(), "on-demand: {default}");
    assert_eq!(spot["name"], "spot");
    assert_eq!(spot["shape"], t3_micro, "{spot}");
    assert!(
        spot["spot_price"]["usd_per_hour"].as_f64().unwrap() > 0.0,
        "{spot}"
    );
    let out = server.cli(&["pools"]);
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2 vCPU 1024 MiB"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("spot") && l.contains("spot $")),
        "{text}"
    );

    ok(&server.cli(&[
        "deploy", "fleet", "--nodes", "1", "--ttl", "10m", "--pool", "spot", "--wait",
    ]));
    let live = ec2.live();
    assert_eq!(live.len(), 1, "{live:?}");
    let seen = &live[0];
    assert_eq!(seen.tags.get(TAG_POOL).map(String::as_str), Some("spot"));
    let (lifecycle, user_data) = ec2.rt.block_on(async {
        let described = ec2
            .client
            .describe_instances()
            .instance_ids(&seen.id)
            .send()
            .await
            .unwrap();
        let lifecycle = described.reservations()[0].instances()[0]
            .instance_lifecycle()
            .map(|l| l.as_str().to_owned());
        let attribute = ec2
            .client
            .describe_instance_attribute()
            .instance_id(&seen.id)
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap();
        let encoded = attribute.user_data().unwrap().value().unwrap().to_owned();
        (lifecycle, encoded)
    });
    assert_eq!(lifecycle.as_deref(), Some("spot"));
    use base64::Engine as _;
    let user_data = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(user_data)
            .unwrap(),
    )
    .unwrap();
    assert!(
        user_data.contains("export FLOTILLA_CLUSTER='fleet' FLOTILLA_POOL='spot'"),
        "{user_data}"
    );
    assert!(
        user_data.ends_with("echo fleet spot > /tmp/who\n"),
        "{user_data}"
    );

    ok(&server.cli(&["destroy", "fleet", "--wait"]));
    wait_for("no instance left running", || ec2.live().is_empty());
}

/// A second AMI moto knows.
const AMI_2: &str = "ami-03cf127a";

/// A pool whose image comes from a shared config: a new version of the
/// config rolls its clusters onto the new image, every instance tagged with
/// the launch version it got, an old one terminated only once its
/// replacement runs, and nothing made beyond one replacement each.
#[test]
fn a_new_image_in_a_shared_config_rolls_out_on_ec2() {
    let moto = Moto::start();
    let ec2 = Ec2::new(&moto);
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let server = start(&dir, &config(&moto.endpoint, 3, 50));
    let images = dir.join("images.toml");
    std::fs::write(&images, format!("{REGION} = \"{AMI}\"\n")).unwrap();
    ok(&server.cli(&[
        "shared-config",
        "create",
        "base-images",
        "--schema",
        "aws/images",
        images.to_str().unwrap(),
    ]));
    let pool = dir.join("web.toml");
    std::fs::write(
        &pool,
        format!(
            "driver = \"aws\"\ninstance_type = \"{INSTANCE_TYPE}\"\nimage = {{ shared = \"base-images\", key = \"{REGION}\" }}\n\n[rollout]\nmax_surge = 1\n"
        ),
    )
    .unwrap();
    ok(&server.cli(&["pool", "apply", pool.to_str().unwrap()]));
    ok(&server.cli(&[
        "deploy", "site", "--nodes", "2", "--ttl", "10m", "--pool", "web", "--wait",
    ]));
    let first = ec2.live();
    assert_eq!(first.len(), 2, "{first:?}");
    let v1 = first[0].tags.get(flotilla_cloud::TAG_POOL_VERSION).cloned();
    assert!(v1.is_some(), "{first:?}");
    for i in &first {
        assert_eq!(i.image, AMI);
        assert_eq!(i.tags.get(flotilla_cloud::TAG_POOL_VERSION), v1.as_ref());
    }
    let status = server.status("site");
    for node in status["nodes"].as_array().unwrap() {
        assert_eq!(node["pool_version"].as_str(), v1.as_deref(), "{status}");
    }

    std::fs::write(&images, format!("{REGION} = \"{AMI_2}\"\n")).unwrap();
    ok(&server.cli(&[
        "shared-config",
        "update",
        "base-images",
        images.to_str().unwrap(),
    ]));
    wait_for("every instance on the new image", || {
        let live = ec2.live();
        let running = live
            .iter()
            .filter(|i| i.state == InstanceStateName::Running)
            .count();
        assert!(running >= 2, "fewer than two running: {live:?}");
        live.len() == 2 && live.iter().all(|i| i.image == AMI_2)
    });
    let second = ec2.live();
    let v2 = second[0]
        .tags
        .get(flotilla_cloud::TAG_POOL_VERSION)
        .cloned();
    assert!(v2.is_some() && v2 != v1, "{second:?}");
    assert_eq!(ec2.all().len(), 4, "one replacement each, nothing more");
    wait_for("the rollout is over", || {
        server.status("site").get("rollout").is_none()
    });
    let out = server.cli(&["pool", "rollout", "web"]);
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("idle"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    ok(&server.cli(&["destroy", "site", "--wait"]));
    wait_for("no instance left running", || ec2.live().is_empty());
}

/// Plays an instance booting with `user_data`: runs it with `sh` in
/// `machine` (its temporary directory), with a `shutdown` on its PATH that
/// only records its arguments. Returns how it ended and what shutdown was
/// asked, a line each.
fn boot(machine: &Path, user_data: &str) -> (std::process::Output, String) {
    use std::os::unix::fs::PermissionsExt;
    let bin = machine.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let shutdowns = machine.join("shutdowns");
    let stub = bin.join("shutdown");
    std::fs::write(
        &stub,
        format!("#!/bin/sh\necho \"$*\" >> '{}'\n", shutdowns.display()),
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = machine.join("user-data");
    std::fs::write(&script, user_data).unwrap();
    let out = std::process::Command::new("sh")
        .arg(&script)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("TMPDIR", machine)
        .output()
        .unwrap();
    (out, std::fs::read_to_string(&shutdowns).unwrap_or_default())
}

/// The user data instance `id` was launched with, as moto keeps it.
fn user_data_of(ec2: &Ec2, id: &str) -> String {
    use aws_sdk_ec2::types::InstanceAttributeName;
    use base64::Engine as _;

    let attribute = ec2
        .rt
        .block_on(
            ec2.client
                .describe_instance_attribute()
                .instance_id(id)
                .attribute(InstanceAttributeName::UserData)
                .send(),
        )
        .expect("DescribeInstanceAttribute");
    let user_data = base64::engine::general_purpose::STANDARD
        .decode(attribute.user_data().and_then(|v| v.value()).unwrap())
        .unwrap();
    String::from_utf8(user_data).unwrap()
}

/// A job on an ec2 pool, end to end but for the cloud running the user
/// data: the attempt's instance is made on moto with its agent's user data
/// and a shutdown that terminates it. The test plays the instance, running
/// that user data with `sh` (a stub `shutdown` on its PATH records the
/// timer): it fetches the agent from the server, checks its SHA-256 and
/// runs it, and the job's output and exit status reach the server; the
/// instance is then terminated.
#[test]
fn a_job_on_ec2_boots_its_agent_from_its_user_data() {
    use aws_sdk_ec2::types::InstanceAttributeName;

    let moto = Moto::start();
    let ec2 = Ec2::new(&moto);
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    // Without [jobs] server_url, jobs on EC2 wait: its instances could not
    // reach a listen address.
    let server = start(&dir, &config(&moto.endpoint, 3, 50));
    let file = dir.join("job.toml");
    std::fs::write(
        &file,
        "name = \"waits\"\nscript = \"true\"\nmax_runtime = \"5m\"\n",
    )
    .unwrap();
    ok(&server.cli(&["job", "submit", file.to_str().unwrap()]));
    wait_for("the job says why it waits", || {
        let out = server.cli(&["--output", "json", "job", "show", "1"]);
        let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        job["reason"]
            .as_str()
            .is_some_and(|r| r.contains("set [jobs] server_url"))
    });
    assert!(ec2.all().is_empty(), "no instance made for nothing");
    drop(server);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = sandbox.path().join("reachable");
    std::fs::create_dir_all(&dir).unwrap();
    let server = start_at(
        &dir,
        &format!(
            "{}\n[jobs]\nserver_url = \"http://127.0.0.1:{port}\"\n",
            config(&moto.endpoint, 3, 50)
        ),
        &format!("127.0.0.1:{port}"),
    );
    let file = dir.join("job.toml");
    std::fs::write(
        &file,
        "name = \"on-ec2\"\nscript = \"echo hello from ec2\"\nmax_runtime = \"5m\"\n",
    )
    .unwrap();
    ok(&server.cli(&["job", "submit", file.to_str().unwrap()]));

    let mut instance = None;
    wait_for("the attempt's instance", || {
        instance = ec2
            .live()
            .into_iter()
            .find(|i| i.tags.get("flotilla-job").map(String::as_str) == Some("1/1"));
        instance.is_some()
    });
    let instance = instance.unwrap();
    let attribute = |name: InstanceAttributeName| {
        ec2.rt
            .block_on(
                ec2.client
                    .describe_instance_attribute()
                    .instance_id(&instance.id)
                    .attribute(name)
                    .send(),
            )
            .expect("DescribeInstanceAttribute")
    };
    let behaviour = attribute(InstanceAttributeName::InstanceInitiatedShutdownBehavior);
    assert_eq!(
        behaviour
            .instance_initiated_shutdown_behavior()
            .and_then(|v| v.value()),
        Some("terminate"),
        "its own shutdown ends it for good"
    );
    let user_data = user_data_of(&ec2, &instance.id);
    // Boot timeout 10 min, max_runtime 5, a margin of 10.
    assert!(
        user_data.starts_with("#!/bin/sh\n") && user_data.contains("\nshutdown -h +25 "),
        "{user_data}"
    );

    let (out, shutdowns) = boot(&dir.join("instance"), &user_data);
    ok(&out);
    assert_eq!(
        shutdowns, "-h +25\n",
        "the timer was set, and nothing shut the instance down at once"
    );

    let shown = server.cli(&["--output", "json", "job", "show", "1"]);
    ok(&shown);
    let job: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(job["state"], "succeeded", "{job}");
    let log = server.cli(&["job", "logs", "1"]);
    ok(&log);
    assert!(
        String::from_utf8_lossy(&log.stdout).contains(" out hello from ec2\n"),
        "{}",
        String::from_utf8_lossy(&log.stdout)
    );
    wait_for("the attempt's instance terminated", || {
        !ec2.live().iter().any(|i| i.id == instance.id)
    });
}

/// An instance whose agent cannot be had (the server refuses the fetch)
/// shuts itself down at once, rather than idling until its timer.
#[test]
fn a_user_data_whose_fetch_fails_shuts_the_instance_down() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let server = Server::start(&dir);
    let user_data = flotilla_driver_ec2::user_data::job_agent(
        &server.url,
        7,
        1,
        "not-a-token",
        Duration::from_secs(90),
        "00",
    );
    let (out, shutdowns) = boot(&dir.join("instance"), &user_data);
    assert_ne!(code(&out), 0);
    assert_eq!(shutdowns, "-h +2\n-h now\n");
}

/// On a pool that launches spot, a job is bought on the market it asked
/// for: on demand unless it says `spot = true`.
#[test]
fn a_job_on_a_spot_pool_is_bought_on_the_market_it_asked_for() {
    let moto = Moto::start();
    let ec2 = Ec2::new(&moto);
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = start_at(
        &dir,
        &format!(
            "{}\n[jobs]\nserver_url = \"http://127.0.0.1:{port}\"\n",
            config_with_spot_pool(&moto.endpoint)
        ),
        &format!("127.0.0.1:{port}"),
    );
    for (name, spot) in [("on-demand", false), ("on-spot", true)] {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "name = \"{name}\"\nscript = \"true\"\nmax_runtime = \"5m\"\npool = \"spot\"\nspot = {spot}\n"
            ),
        )
        .unwrap();
        ok(&server.cli(&["job", "submit", file.to_str().unwrap()]));
    }
    let lifecycle = |tag: &str| {
        let seen = ec2
            .live()
            .into_iter()
            .find(|i| i.tags.get("flotilla-job").map(String::as_str) == Some(tag))?;
        let described = ec2
            .rt
            .block_on(
                ec2.client
                    .describe_instances()
                    .instance_ids(&seen.id)
                    .send(),
            )
            .unwrap();
        Some(
            described.reservations()[0].instances()[0]
                .instance_lifecycle()
                .map(|l| l.as_str().to_owned()),
        )
    };
    wait_for("both jobs' instances", || {
        lifecycle("1/1").is_some() && lifecycle("2/1").is_some()
    });
    assert_eq!(lifecycle("1/1"), Some(None), "on demand, as asked");
    assert_eq!(lifecycle("2/1"), Some(Some("spot".to_owned())));
    let shown = server.cli(&["--output", "json", "job", "show", "2"]);
    let job: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(job["attempts"][0]["market"], "spot", "{job}");
}

/// A pool's `idle_nodes` on ec2: the instance kept warm is launched with
/// user data that waits for a job. The test plays it while it asks, then
/// submits a job: the script learns its attempt, sets the instance's timer
/// to the job's own lifetime, fetches the agent and runs the job, and the
/// instance is then terminated.
#[test]
fn an_instance_kept_warm_on_ec2_runs_the_job_that_takes_it() {
    let moto = Moto::start();
    let ec2 = Ec2::new(&moto);
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pools = config(&moto.endpoint, 3, 50).replace(
        &format!("instance_type = \"{INSTANCE_TYPE}\"\n"),
        &format!("instance_type = \"{INSTANCE_TYPE}\"\nidle_nodes = 1\n"),
    );
    let server = start_at(
        &dir,
        &format!("{pools}\n[jobs]\nserver_url = \"http://127.0.0.1:{port}\"\n"),
        &format!("127.0.0.1:{port}"),
    );
    let mut warm = None;
    wait_for("the instance kept warm", || {
        warm = ec2
            .live()
            .into_iter()
            .find(|i| i.tags.contains_key("flotilla-warm"));
        warm.is_some()
    });
    let warm = warm.unwrap();
    assert!(!warm.tags.contains_key("flotilla-job"), "{warm:?}");
    let user_data = user_data_of(&ec2, &warm.id);
    // Boot timeout 10 min, warm_max_idle 60, a margin of 10.
    assert!(user_data.contains("\nshutdown -h +80 "), "{user_data}");

    let machine = dir.join("instance");
    let played = std::thread::spawn(move || boot(&machine, &user_data));
    // It asks for a job before there is one.
    std::thread::sleep(Duration::from_secs(3));
    let file = dir.join("job.toml");
    std::fs::write(
        &file,
        "name = \"warm\"\nscript = \"echo hello from a warm instance\"\nmax_runtime = \"5m\"\n",
    )
    .unwrap();
    ok(&server.cli(&["job", "submit", file.to_str().unwrap()]));
    let (out, shutdowns) = played.join().unwrap();
    ok(&out);
    // The job's lifetime from then: boot timeout 10, max_runtime 5, a
    // margin of 10.
    assert_eq!(shutdowns, "-h +80\n-c\n-h +25\n");

    let shown = server.cli(&["--output", "json", "job", "show", "1"]);
    ok(&shown);
    let job: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"][0]["instance"], warm.id.as_str(), "{job}");
    let log = server.cli(&["job", "logs", "1"]);
    assert!(
        String::from_utf8_lossy(&log.stdout).contains(" out hello from a warm instance\n"),
        "{}",
        String::from_utf8_lossy(&log.stdout)
    );
    wait_for("the instance terminated and another kept warm", || {
        let live = ec2.live();
        !live.iter().any(|i| i.id == warm.id)
            && live.iter().any(|i| i.tags.contains_key("flotilla-warm"))
    });
}
