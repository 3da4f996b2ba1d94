//! The `local` driver beyond the shared conformance suite: what real,
//! detached node processes add (restarts, pid reuse, crashes mid-launch,
//! stubborn nodes, self-fencing) and the node agent itself.
//!
//! Every test works in a temporary directory; removing it at the end fences
//! off any node a failed assertion left behind.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use flotilla_cloud::{ownership_tags, CreateRequest, Health, Instance, InstanceSet, Tags};
use flotilla_domain::{ClusterName, InstanceId, InstanceSetId, InstanceType};
use flotilla_driver_local::layout::{
    InstanceRecord, ProcessRecord, ADDRESS_FILE, DESTROY_FILE, PROCESS_FILE, RECORD_FILE,
};
use flotilla_driver_local::{LocalConfig, LocalInstanceSet, LEFTOVER_GRACE, PENDING_RECORD_CUTOFF};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(20);

fn config(dir: &Path, grace: Duration) -> LocalConfig {
    LocalConfig {
        dir: dir.to_owned(),
        node_program: PathBuf::from(env!("CARGO_BIN_EXE_flotilla")),
        grace,
        max_batch: 5,
    }
}

fn open(dir: &Path, id: &str) -> LocalInstanceSet {
    open_with_grace(dir, id, Duration::from_secs(2))
}

fn open_with_grace(dir: &Path, id: &str, grace: Duration) -> LocalInstanceSet {
    LocalInstanceSet::open(config(dir, grace), InstanceSetId::new(id).unwrap())
        .expect("open local driver")
}

fn request(cluster: &str, init_data: Option<String>) -> CreateRequest {
    CreateRequest {
        cluster: ClusterName::new(cluster).unwrap(),
        pool: flotilla_domain::PoolName::new("default").unwrap(),
        instance_type: InstanceType::new("local.small").unwrap(),
        image: None,
        tags: Tags::new(),
        init_data,
        workload: None,
        pool_version: None,
        count: 1,
        shutdown_terminates: false,
        market: None,
    }
}

async fn create_one(set: &LocalInstanceSet, cluster: &str, init_data: Option<String>) -> Instance {
    let mut made = set
        .create(&request(cluster, init_data))
        .await
        .expect("create");
    assert_eq!(made.len(), 1);
    made.remove(0)
}

async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn listed(set: &LocalInstanceSet, id: &InstanceId) -> Option<Instance> {
    set.list(&Tags::new())
        .await
        .expect("list")
        .into_iter()
        .find(|i| &i.id == id)
}

/// Waits until the node answers its probe; returns it as listed then.
async fn ready(set: &LocalInstanceSet, id: &InstanceId) -> Instance {
    eventually("node becoming ready", SETTLE, || async {
        match listed(set, id).await {
            Some(i) => i.address.is_some() && set.probe(&i).await == Health::Ready,
            None => false,
        }
    })
    .await;
    listed(set, id).await.expect("listed once ready")
}

fn process_record(set: &LocalInstanceSet, id: &InstanceId) -> Value {
    let path = set.instance_dir(id).join(PROCESS_FILE);
    serde_json::from_slice(&std::fs::read(&path).expect("process record"))
        .expect("process record JSON")
}

fn node_pid(set: &LocalInstanceSet, id: &InstanceId) -> u32 {
    process_record(set, id)["pid"].as_u64().expect("pid") as u32
}

/// `/proc/PID/stat` fields from field 3 (state) on; `None` if no process.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &line[line.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Running: exists and is not a zombie (nodes adopted by init may linger as
/// zombies until it reaps them).
fn running(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f[0] != "Z" && f[0] != "X")
}

async fn stopped(what: &str, pid: u32, within: Duration) {
    eventually(what, within, || async move { !running(pid) }).await;
}

async fn http_get(address: &str, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{address}{path}"))
        .await
        .expect("HTTP request to node");
    let status = response.status().as_u16();
    (status, response.text().await.expect("response body"))
}

async fn destroy_and_wait(set: &LocalInstanceSet, id: &InstanceId) {
    set.destroy(id).await.expect("destroy");
    eventually("destroyed node leaving the listing", SETTLE, || async {
        listed(set, id).await.is_none()
    })
    .await;
    eventually("instance directory removal", SETTLE, || async {
        !set.instance_dir(id).exists()
    })
    .await;
}

const CREATOR_DIR: &str = "FLOTILLA_TEST_CREATOR_DIR";

/// A server is SIGKILLed with a node running; the node lives on, and a new
/// server with the same directory and ID lists it, probes it and destroys
/// it. The "server" is this test run again as a child process in the
/// creator role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_adopts_nodes_that_outlived_it() {
    if let Ok(dir) = std::env::var(CREATOR_DIR) {
        let set = open(Path::new(&dir), "adopt");
        let made = create_one(&set, "adopt", None).await;
        println!("CREATED {}", made.id);
        // Wait to be killed; bounded so a lost parent cannot keep it forever.
        tokio::time::sleep(Duration::from_secs(120)).await;
        panic!("creator was not killed");
    }

    let dir = tempfile::tempdir().unwrap();
    let mut creator = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "a_restarted_server_adopts_nodes_that_outlived_it",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CREATOR_DIR, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the creator");
    let stdout = creator.stdout.take().unwrap();
    let id = tokio::time::timeout(SETTLE, async {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await.expect("creator output") {
            // libtest may print "test NAME ... " on the same line first.
            if let Some((_, id)) = line.split_once("CREATED ") {
                return InstanceId::new(id.trim());
            }
        }
        panic!("the creator exited without creating a node");
    })
    .await
    .expect("the creator reports its node");
    creator.start_kill().unwrap();
    let status = creator.wait().await.unwrap();
    assert!(!status.success(), "the creator was killed");

    let set = open(dir.path(), "adopt");
    let pid = node_pid(&set, &id);
    assert!(running(pid), "the node outlived the server that started it");
    let fields = stat_fields(pid).unwrap();
    assert_eq!(fields[3], pid.to_string(), "the node leads its own session");

    let node = ready(&set, &id).await;
    assert_eq!(node.cluster().unwrap().as_str(), "adopt");
    assert_eq!(node.instance_set(), Some("adopt"));
    let address: std::net::SocketAddr = node.address.as_deref().unwrap().parse().unwrap();
    assert!(address.ip().is_loopback(), "{address}");

    destroy_and_wait(&set, &id).await;
    stopped("node exit after destroy", pid, SETTLE).await;
    assert_eq!(set.probe(&node).await, Health::NotReady);
}

/// A recorded pid whose start time differs is another process: the node is
/// dead. The driver removes the instance and never signals that process;
/// the real node, its record gone, fences itself off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pid_is_not_mistaken_for_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let set = open(dir.path(), "reuse");
    let made = create_one(&set, "reuse", None).await;
    ready(&set, &made.id).await;
    let pid = node_pid(&set, &made.id);

    let mut record = process_record(&set, &made.id);
    let start_time = record["start_time"].as_u64().unwrap();
    record["start_time"] = Value::from(start_time + 1);
    std::fs::write(
        set.instance_dir(&made.id).join(PROCESS_FILE),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();

    assert!(
        listed(&set, &made.id).await.is_none(),
        "an instance with a reused pid is dead"
    );
    assert!(
        !set.instance_dir(&made.id).exists(),
        "a dead instance is removed"
    );
    // Still running right after: the driver sent it nothing.
    assert!(running(pid));
    stopped("self-fencing of the orphaned node", pid, SETTLE).await;
}

fn write_record(dir: &Path, id: &str, set: &str, age: chrono::Duration) {
    write_record_by(dir, id, set, age, None);
}

fn write_record_by(
    dir: &Path,
    id: &str,
    set: &str,
    age: chrono::Duration,
    launcher: Option<ProcessRecord>,
) {
    let cluster = ClusterName::new("leftover").unwrap();
    let instance_type = InstanceType::new("local.small").unwrap();
    let record = InstanceRecord {
        id: InstanceId::new(id),
        tags: ownership_tags(&InstanceSetId::new(set).unwrap(), &cluster, &instance_type),
        instance_type,
        image: None,
        init_data: None,
        workload: None,
        launched_at: Utc::now() - age,
        launcher,
    };
    let instance_dir = dir.join(id);
    std::fs::create_dir_all(&instance_dir).unwrap();
    std::fs::write(
        instance_dir.join(RECORD_FILE),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
}

/// A server that died between writing a record and starting its node leaves
/// a record without a pid: one from before this server opened the
/// directory is removed at the first listing (no phantom node booting for
/// 30 s); one launched since (another server sharing the directory) is kept
/// and listed as pending for a while, removed after the cutoff; another
/// set's leftovers are not ours to remove.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_without_a_process_are_removed_after_the_cutoff() {
    let dir = tempfile::tempdir().unwrap();
    let cutoff = chrono::Duration::from_std(PENDING_RECORD_CUTOFF).unwrap();
    write_record(dir.path(), "local-00000000000000a1", "mine", cutoff * 2);
    // Launched a second before this server started and never started: a
    // server was killed while launching it. Gone at the first listing.
    write_record(
        dir.path(),
        "local-00000000000000a3",
        "mine",
        chrono::Duration::seconds(1),
    );
    write_record(dir.path(), "local-00000000000000b1", "other", cutoff * 2);
    let set = open(dir.path(), "mine");
    // Launched now, by a server sharing the directory: being started.
    write_record(
        dir.path(),
        "local-00000000000000a2",
        "mine",
        chrono::Duration::zero(),
    );

    let listing = set.list(&Tags::new()).await.unwrap();
    let ids: Vec<&str> = listing.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        ids,
        ["local-00000000000000a2"],
        "only the young record of ours is listed"
    );
    assert_eq!(listing[0].address, None);
    assert_eq!(set.probe(&listing[0]).await, Health::NotReady);
    assert!(
        !dir.path().join("local-00000000000000a1").exists(),
        "the stale record is removed"
    );
    assert!(
        !dir.path().join("local-00000000000000a3").exists(),
        "the record from before this server started is removed"
    );
    assert!(dir.path().join("local-00000000000000a2").exists());
    assert!(
        dir.path().join("local-00000000000000b1").exists(),
        "another set's record is left alone"
    );

    set.destroy(&InstanceId::new("local-00000000000000a2"))
        .await
        .unwrap();
    assert!(!dir.path().join("local-00000000000000a2").exists());
    assert!(set.list(&Tags::new()).await.unwrap().is_empty());
}

/// A record with no process whose launching server is gone (another server
/// on the same directory, killed mid-launch) is removed at once, even when
/// launched after this server opened the directory; one whose launcher
/// lives is kept as pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_launcher_is_gone_is_removed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let me = std::process::id();
    let start_time = flotilla_driver_local::process::stat(me)
        .unwrap()
        .unwrap()
        .start_time;
    let now = chrono::Duration::zero();
    let alive = ProcessRecord {
        pid: me,
        start_time,
    };
    // Launched before this server opened the directory by a server that
    // still runs (sharing it): its launch may still finish.
    write_record_by(
        dir.path(),
        "local-00000000000000d0",
        "mine",
        chrono::Duration::seconds(1),
        Some(alive),
    );
    let set = open(dir.path(), "mine");
    // The same pid started at another time: a server that is gone.
    let gone = ProcessRecord {
        pid: me,
        start_time: start_time + 1,
    };
    write_record_by(
        dir.path(),
        "local-00000000000000d1",
        "mine",
        now,
        Some(alive),
    );
    write_record_by(
        dir.path(),
        "local-00000000000000d2",
        "mine",
        now,
        Some(gone),
    );

    let listing = set.list(&Tags::new()).await.unwrap();
    let ids: Vec<&str> = listing.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        ids,
        ["local-00000000000000d0", "local-00000000000000d1"],
        "a live launcher's records are pending"
    );
    assert!(!dir.path().join("local-00000000000000d2").exists());
    for id in ["local-00000000000000d0", "local-00000000000000d1"] {
        set.destroy(&InstanceId::new(id)).await.unwrap();
    }
}

/// Sets a directory's modification time `age` in the past.
fn age_dir(dir: &Path, age: Duration) {
    let at = std::time::SystemTime::now() - age;
    std::fs::File::open(dir).unwrap().set_modified(at).unwrap();
}

/// A launch cut short (killed, out of file descriptors) or a removal cut
/// short leaves a directory that is no instance: swept by the listing once
/// untouched for the grace period, unless it is fresh, another set's, or a
/// node still runs in it. A launch itself leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_left_without_a_record_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let old = LEFTOVER_GRACE * 2;
    let building = dir.path().join(".building-local-00000000000000c1");
    std::fs::create_dir(&building).unwrap();
    std::fs::write(building.join(".instance.json.tmp-1-00000000"), b"{").unwrap();
    age_dir(&building, old);
    let emptied = dir.path().join("local-00000000000000c2");
    std::fs::create_dir(&emptied).unwrap();
    age_dir(&emptied, old);
    let fresh = dir.path().join("local-00000000000000c3");
    std::fs::create_dir(&fresh).unwrap();
    write_record(
        dir.path(),
        "local-00000000000000c4",
        "other",
        chrono::Duration::zero(),
    );
    let others = dir.path().join(".building-local-00000000000000c4");
    std::fs::rename(dir.path().join("local-00000000000000c4"), &others).unwrap();
    age_dir(&others, old);

    let set = open(dir.path(), "mine");
    assert!(set.list(&Tags::new()).await.unwrap().is_empty());
    assert!(!building.exists(), "a launch cut short is swept");
    assert!(!emptied.exists(), "a removal cut short is swept");
    assert!(fresh.exists(), "a fresh one may be in use: kept");
    assert!(others.exists(), "another set's is not ours to remove");

    let made = create_one(&set, "c", None).await;
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".building-local-") && !n.ends_with("c4"))
        .collect();
    assert!(
        names.is_empty(),
        "a launch leaves no building directory: {names:?}"
    );
    assert!(dir.path().join(made.id.as_str()).join(RECORD_FILE).exists());
    set.destroy(&made.id).await.unwrap();
}

/// A workload that ignores SIGTERM keeps the agent waiting for it (up to
/// its own, longer, limit); the driver's grace period ends that with
/// SIGKILL to the whole node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_escalates_to_sigkill_when_the_node_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let workload_pid_file = out.path().join("workload.pid");
    let grace = Duration::from_secs(2);
    let set = open_with_grace(dir.path(), "stubborn", grace);
    let workload = format!(
        "trap '' TERM; echo $$ > {}; while :; do sleep 0.1; done",
        workload_pid_file.display()
    );
    let made = create_one(&set, "stubborn", Some(workload)).await;
    ready(&set, &made.id).await;
    let pid = node_pid(&set, &made.id);
    eventually("workload start", SETTLE, || async {
        workload_pid_file.exists()
    })
    .await;
    let workload_pid: u32 = std::fs::read_to_string(&workload_pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(running(workload_pid));

    let started = Instant::now();
    set.destroy(&made.id).await.expect("destroy");
    tokio::time::sleep(grace / 4).await;
    assert!(running(workload_pid), "the workload ignores SIGTERM");
    assert!(
        listed(&set, &made.id).await.is_some(),
        "a stopping node is still listed"
    );
    // A repeated destroy within the grace period changes nothing.
    set.destroy(&made.id).await.expect("repeated destroy");

    stopped("agent exit", pid, SETTLE).await;
    stopped("workload exit", workload_pid, SETTLE).await;
    let took = started.elapsed();
    assert!(
        took >= grace,
        "SIGKILL came only after the grace period ({took:?})"
    );
    assert!(
        took < flotilla_driver_local::agent::WORKLOAD_GRACE,
        "the driver's SIGKILL, not the agent's own limit, ended the node ({took:?})"
    );
    eventually("destroyed node leaving the listing", SETTLE, || async {
        listed(&set, &made.id).await.is_none()
    })
    .await;
}

/// The destroy request time is kept on disk: a destroy repeated after the
/// grace period (by a restarted server with no watcher left) kills at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroy_after_the_grace_period_kills_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let set = open_with_grace(dir.path(), "late", Duration::from_secs(60));
    let made = create_one(
        &set,
        "late",
        Some("trap '' TERM; while :; do sleep 0.1; done".into()),
    )
    .await;
    ready(&set, &made.id).await;
    let pid = node_pid(&set, &made.id);
    // As if a destroy had been asked for two minutes ago by a server that
    // then died.
    let asked = (Utc::now() - chrono::Duration::seconds(120)).to_rfc3339();
    std::fs::write(set.instance_dir(&made.id).join(DESTROY_FILE), asked).unwrap();

    let started = Instant::now();
    set.destroy(&made.id).await.expect("destroy");
    stopped("node exit", pid, SETTLE).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "killed at once, not after another grace period ({:?})",
        started.elapsed()
    );
    eventually("destroyed node leaving the listing", SETTLE, || async {
        listed(&set, &made.id).await.is_none()
    })
    .await;
}

/// The agent says who it is, and runs the workload with the node's identity
/// in its environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_info_and_runs_the_workload() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let env_file = out.path().join("env");
    let set = open(dir.path(), "agent");
    let workload = format!(
        "echo \"$FLOTILLA_CLUSTER $FLOTILLA_NODE_ID $FLOTILLA_NODE_ADDRESS\" > {}; exec sleep 1000",
        env_file.display()
    );
    let made = create_one(&set, "agent-info", Some(workload)).await;
    let node = ready(&set, &made.id).await;
    let address = node.address.clone().unwrap();

    let (status, body) = http_get(&address, "/info").await;
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["cluster"], "agent-info");
    assert_eq!(info["node_id"], made.id.as_str());
    assert_eq!(info["instance_set"], "agent");
    assert_eq!(info["instance_type"], "local.small");
    assert_eq!(
        info["pid"].as_u64(),
        Some(u64::from(node_pid(&set, &made.id)))
    );
    assert!(info["started_at"]
        .as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok()));

    let (status, body) = http_get(&address, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));

    eventually("workload writing its environment", SETTLE, || async {
        std::fs::read_to_string(&env_file).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert_eq!(env.trim(), format!("agent-info {} {address}", made.id));

    destroy_and_wait(&set, &made.id).await;
}

/// A workload that exits non-zero makes the node report unhealthy; the
/// node itself keeps running so the engine can see and replace it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_workload_makes_the_node_unhealthy() {
    let dir = tempfile::tempdir().unwrap();
    let set = open(dir.path(), "failing");
    let made = create_one(&set, "failing", Some("exit 3".into())).await;
    eventually("node address", SETTLE, || async {
        listed(&set, &made.id)
            .await
            .is_some_and(|i| i.address.is_some())
    })
    .await;
    let node = listed(&set, &made.id).await.unwrap();
    let address = node.address.clone().unwrap();
    eventually("healthz turning 503", SETTLE, || async {
        http_get(&address, "/healthz").await.0 == 503
    })
    .await;
    assert_eq!(set.probe(&node).await, Health::NotReady);
    assert!(
        listed(&set, &made.id).await.is_some(),
        "the node still runs"
    );
    destroy_and_wait(&set, &made.id).await;
}

/// A node whose record is removed stops within a few seconds, and deleting
/// the driver's directory (as a test's temporary directory is) stops every
/// node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_stop_when_their_records_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let set = open(dir.path(), "fence");
    let mut request = request("fence", Some("exec sleep 1000".into()));
    request.count = 3;
    let made = set.create(&request).await.expect("create");
    assert_eq!(made.len(), 3);
    let mut pids = Vec::new();
    for i in &made {
        ready(&set, &i.id).await;
        pids.push(node_pid(&set, &i.id));
    }
    assert!(pids.iter().all(|p| running(*p)));

    std::fs::remove_file(set.instance_dir(&made[0].id).join(RECORD_FILE)).unwrap();
    stopped(
        "self-fencing after the record went",
        pids[0],
        Duration::from_secs(10),
    )
    .await;
    assert!(
        running(pids[1]) && running(pids[2]),
        "the other nodes run on"
    );

    std::fs::remove_dir_all(dir.path()).unwrap();
    for pid in &pids[1..] {
        stopped(
            "self-fencing after the directory went",
            *pid,
            Duration::from_secs(10),
        )
        .await;
    }
}

/// A node has no address until its agent has written one; the listing then
/// reports what the agent wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_file_is_what_the_listing_reports() {
    let dir = tempfile::tempdir().unwrap();
    let set = open(dir.path(), "addr");
    let made = create_one(&set, "addr", None).await;
    assert_eq!(made.address, None, "a new node has no address yet");
    let node = ready(&set, &made.id).await;
    let written = std::fs::read_to_string(set.instance_dir(&made.id).join(ADDRESS_FILE)).unwrap();
    assert_eq!(node.address.as_deref(), Some(written.trim()));
    destroy_and_wait(&set, &made.id).await;
}

/// A command run on a node ends with everything it started, at its end or
/// at its time limit; another instance set's node is neither read nor
/// touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_ends_what_it_started_and_stays_within_its_set() {
    let dir = tempfile::tempdir().unwrap();
    let set = open(dir.path(), "reach");
    let other = open(dir.path(), "other");
    let made = create_one(
        &set,
        "reach",
        Some("echo ready to serve; exec sleep 1000".into()),
    )
    .await;
    ready(&set, &made.id).await;

    eventually(
        "the workload's line in the node's output",
        SETTLE,
        || async {
            let console = set.console(&made.id, None, 1 << 20).await.unwrap().unwrap();
            console.text.contains("ready to serve")
        },
    )
    .await;
    let tail = set.console(&made.id, None, 4).await.unwrap().unwrap();
    assert_eq!(tail.to - tail.from, 4);

    let argv = |script: &str| vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    // The background sleep writes its pid, then the command returns.
    let out = set
        .exec(
            &made.id,
            &argv("sleep 300 & echo $!"),
            Duration::from_secs(10),
            1024,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.exit_code, Some(0));
    let background: u32 = out.stdout.trim().parse().unwrap();
    stopped("the command's background process", background, SETTLE).await;

    let out = set
        .exec(
            &made.id,
            &argv("echo started; sleep 300"),
            Duration::from_millis(500),
            1024,
        )
        .await
        .unwrap()
        .unwrap();
    assert!(out.timed_out);
    assert_eq!((out.exit_code, out.signal), (None, Some(libc::SIGKILL)));
    assert_eq!(out.stdout, "started\n");

    let out = set
        .exec(
            &made.id,
            &argv("yes | head -c 5000"),
            Duration::from_secs(10),
            100,
        )
        .await
        .unwrap()
        .unwrap();
    assert!(out.truncated && out.stdout.len() == 100, "{out:?}");

    // A command whose caller goes away ends with everything it started.
    let pid_file = dir.path().join("abandoned.pid");
    let abandoned = tokio::time::timeout(
        Duration::from_millis(500),
        set.exec(
            &made.id,
            &argv(&format!(
                "sleep 300 & echo $! > {}; wait",
                pid_file.display()
            )),
            Duration::from_secs(60),
            1024,
        ),
    )
    .await;
    assert!(abandoned.is_err(), "still running when dropped");
    let background: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    stopped("an abandoned command's process", background, SETTLE).await;

    // The node's own address, as its workload has it.
    let out = set
        .exec(
            &made.id,
            &argv("echo $FLOTILLA_NODE_HOST"),
            Duration::from_secs(10),
            1024,
        )
        .await
        .unwrap()
        .unwrap();
    let address = set.address(&made).await.unwrap();
    assert_eq!(out.stdout.trim(), address.split_once(':').unwrap().0);

    assert!(other.console(&made.id, None, 100).await.is_err());
    assert!(other
        .exec(&made.id, &argv("true"), Duration::from_secs(1), 100)
        .await
        .is_err());

    destroy_and_wait(&set, &made.id).await;
}
