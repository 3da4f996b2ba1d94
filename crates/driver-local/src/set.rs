//! [`LocalInstanceSet`]: the driver contract over the instance directories
//! and the node processes.

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_cloud::{
    check_tag_update, matches_filter, CloudError, Console, CreateRequest, ExecOutput, Health,
    Instance, InstanceSet, Tags,
};
use flotilla_domain::{InstanceId, InstanceSetId};

use crate::layout::{
    is_instance_id, new_instance_id, read_json, read_text, write_atomic, write_json,
    InstanceRecord, ProcessRecord, ADDRESS_FILE, DESTROY_FILE, LOG_FILE, PROCESS_FILE, RECORD_FILE,
};
use crate::process::{liveness, signal_node, stop_node, Liveness};
use crate::reach;
use crate::{probe, LocalConfig, LocalError};

/// A record without a process older than this is the trace of a server that
/// stopped between writing the record and starting the node: no node will
/// ever run for it. Starting a process takes milliseconds, so this is
/// generous. It applies only while the launching server lives (a record
/// names its launcher); one whose launcher is gone is such a trace at once.
pub const PENDING_RECORD_CUTOFF: Duration = Duration::from_secs(30);

/// A directory that is not (or no longer) an instance, untouched for this
/// long, is the trace of a launch or a removal cut short (a kill, a full
/// disk, no file descriptors left): the listing removes it.
pub const LEFTOVER_GRACE: Duration = Duration::from_secs(60);

/// The prefix of an instance directory being built: it becomes the
/// instance's directory, by rename, only once its record is in it.
const BUILDING_PREFIX: &str = ".building-";

/// The instances of one instance set ID in a local driver directory.
pub struct LocalInstanceSet {
    inner: Arc<Inner>,
}

struct Inner {
    config: LocalConfig,
    id: InstanceSetId,
    /// Instances this server is already waiting on to stop, so a repeated
    /// destroy does not start a second watcher.
    stopping: Mutex<HashSet<InstanceId>>,
    /// Serialises the read-modify-write of records.
    records: tokio::sync::Mutex<()>,
    /// When this server opened the directory: a record from before then
    /// that names no launcher and has no process was being launched by a
    /// server that stopped before it started the node, and never will.
    opened_at: DateTime<Utc>,
    /// This server's process, written into every record it launches.
    launcher: Option<ProcessRecord>,
}

impl LocalInstanceSet {
    /// Opens (creating if needed) the driver directory for instance set `id`.
    /// Instances of other IDs in the directory are counted, logged once, and
    /// never touched.
    pub fn open(mut config: LocalConfig, id: InstanceSetId) -> Result<Self, LocalError> {
        if config.max_batch == 0 {
            return Err(LocalError::ZeroBatch);
        }
        config.node_program = check_node_program(&config.node_program)?;
        std::fs::create_dir_all(&config.dir).map_err(|source| LocalError::CreateDir {
            dir: config.dir.clone(),
            source,
        })?;
        // Nodes get the directory as an argument and run inside it, so it
        // must not depend on the server's working directory.
        config.dir = std::fs::canonicalize(&config.dir).map_err(|source| LocalError::ReadDir {
            dir: config.dir.clone(),
            source,
        })?;
        let census = census(&config.dir).map_err(|source| LocalError::ReadDir {
            dir: config.dir.clone(),
            source,
        })?;
        let ours = census.get(id.as_str()).copied().unwrap_or(0);
        let others: BTreeMap<&String, &usize> = census
            .iter()
            .filter(|(set, _)| set.as_str() != id.as_str())
            .collect();
        if !others.is_empty() {
            let summary = others
                .iter()
                .map(|(set, n)| format!("{set}: {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            tracing::info!(
                dir = %config.dir.display(),
                instance_set = %id,
                foreign = others.values().copied().sum::<usize>(),
                "the local driver directory holds instances of other instance sets ({summary}); leaving them alone"
            );
        }
        tracing::debug!(dir = %config.dir.display(), instance_set = %id, ours, "opened local driver directory");
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                id,
                stopping: Mutex::new(HashSet::new()),
                records: tokio::sync::Mutex::new(()),
                opened_at: Utc::now(),
                launcher: this_process(),
            }),
        })
    }

    /// The configuration in effect (with `dir` and `node_program` made
    /// absolute).
    pub fn config(&self) -> &LocalConfig {
        &self.inner.config
    }

    /// Where instance `id` keeps its files (see [`crate::layout`]).
    pub fn instance_dir(&self, id: &InstanceId) -> PathBuf {
        self.inner.instance_dir(id)
    }
}

/// Resolves the node program to an absolute path (nodes start in their own
/// directory, where a relative path would mean something else) and checks it
/// can be run. A bare name is left to the PATH lookup.
fn check_node_program(program: &Path) -> Result<PathBuf, LocalError> {
    if program.components().count() <= 1 && !program.is_absolute() {
        return Ok(program.to_owned());
    }
    let fail = |reason: String| LocalError::NodeProgram {
        program: program.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(program).map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("it is not a file".into()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(fail("it is not executable".into()));
    }
    std::fs::canonicalize(program).map_err(|e| fail(e.to_string()))
}

/// Instances per instance set ID (`?` for unreadable records).
fn census(dir: &Path) -> io::Result<BTreeMap<String, usize>> {
    let mut census = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_name().to_str().is_some_and(is_instance_id) {
            continue;
        }
        let set = match read_json::<InstanceRecord>(&entry.path().join(RECORD_FILE)) {
            Ok(Some(record)) => record.instance_set().unwrap_or("?").to_owned(),
            Ok(None) => continue,
            Err(_) => "?".to_owned(),
        };
        *census.entry(set).or_insert(0) += 1;
    }
    Ok(census)
}

/// This process, as a record whose liveness can be checked later (its pid
/// and start time, so a reused pid is not mistaken for it).
fn this_process() -> Option<ProcessRecord> {
    let pid = std::process::id();
    crate::process::stat(pid)
        .ok()
        .flatten()
        .map(|stat| ProcessRecord {
            pid,
            start_time: stat.start_time,
        })
}

fn remove_instance_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn to_instance(record: InstanceRecord, address: Option<String>) -> Instance {
    Instance {
        id: record.id,
        instance_type: record.instance_type,
        tags: record.tags,
        address,
        launched_at: record.launched_at,
    }
}

/// A storage failure: permissions will not fix themselves, the rest may.
fn storage_error(what: &str, path: &Path, e: &io::Error) -> CloudError {
    let message = format!("cannot {what} {}: {e}", path.display());
    match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            CloudError::permanent(format!(
                "{message}; make the local driver directory writable"
            ))
        }
        _ => CloudError::transient(message),
    }
}

fn spawn_error(program: &Path, e: &io::Error) -> CloudError {
    let message = format!("cannot start node program {}: {e}", program.display());
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => CloudError::permanent(
            format!("{message}; point node_program at the flotilla binary"),
        ),
        _ => CloudError::transient(message),
    }
}

impl Inner {
    fn instance_dir(&self, id: &InstanceId) -> PathBuf {
        self.config.dir.join(id.as_str())
    }

    fn owns(&self, record: &InstanceRecord) -> bool {
        record.instance_set() == Some(self.id.as_str())
    }

    /// Our record of `id`, if it exists; refuses another set's instance.
    fn owned_record(&self, id: &InstanceId) -> Result<Option<InstanceRecord>, CloudError> {
        if !is_instance_id(id.as_str()) {
            return Ok(None);
        }
        let path = self.instance_dir(id).join(RECORD_FILE);
        match read_json::<InstanceRecord>(&path) {
            Ok(Some(record)) if self.owns(&record) => Ok(Some(record)),
            Ok(Some(_)) => Err(CloudError::not_owned(id, &self.id)),
            Ok(None) => Ok(None),
            Err(e) => Err(storage_error("read instance record", &path, &e)),
        }
    }

    /// Makes a fresh instance directory holding `record` (whose ID it
    /// sets): built under a temporary name and renamed into place, so an
    /// instance directory never lacks its record; a build cut short leaves
    /// only a temporary directory, which the listing sweeps.
    fn make_instance_dir(
        &self,
        record: &mut InstanceRecord,
    ) -> Result<(InstanceId, PathBuf), CloudError> {
        loop {
            let id = new_instance_id();
            let building = self
                .config
                .dir
                .join(format!("{BUILDING_PREFIX}{}", id.as_str()));
            match std::fs::create_dir(&building) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(storage_error("create instance directory", &building, &e)),
            }
            record.id = id.clone();
            let record_path = building.join(RECORD_FILE);
            if let Err(e) = write_json(&record_path, record) {
                let _ = remove_instance_dir(&building);
                return Err(storage_error("write instance record", &record_path, &e));
            }
            let dir = self.instance_dir(&id);
            if dir.exists() {
                let _ = remove_instance_dir(&building);
                continue;
            }
            if let Err(e) = std::fs::rename(&building, &dir) {
                let _ = remove_instance_dir(&building);
                return Err(storage_error("create instance directory", &dir, &e));
            }
            return Ok((id, dir));
        }
    }

    /// Starts one node. `None` if the instance was destroyed while starting.
    async fn launch(
        self: &Arc<Self>,
        request: &CreateRequest,
        tags: &Tags,
    ) -> Result<Option<Instance>, CloudError> {
        let mut record = InstanceRecord {
            id: InstanceId::new(""),
            instance_type: request.instance_type.clone(),
            tags: tags.clone(),
            image: request.image.clone(),
            init_data: request.init_data.clone(),
            workload: request.workload.clone(),
            launched_at: Utc::now(),
            launcher: self.launcher,
        };
        let (id, dir) = self.make_instance_dir(&mut record)?;
        let log_path = dir.join(LOG_FILE);
        let log = match OpenOptions::new().create(true).append(true).open(&log_path) {
            Ok(log) => log,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::info!(instance = %id, "instance destroyed while it was being launched");
                return Ok(None);
            }
            Err(e) => {
                let _ = remove_instance_dir(&dir);
                return Err(storage_error("open node log", &log_path, &e));
            }
        };
        let child = match self.spawn_node(&dir, log) {
            Ok(child) => child,
            Err(e) => {
                let _ = remove_instance_dir(&dir);
                return Err(spawn_error(&self.config.node_program, &e));
            }
        };
        // The child is not reaped before `reap` runs, so its /proc entry
        // exists even if it has already exited.
        let process = child
            .id()
            .ok_or_else(|| io::Error::other("the node process has no pid"))
            .and_then(|pid| {
                let stat = crate::process::stat(pid)?
                    .ok_or_else(|| io::Error::other(format!("process {pid} vanished")))?;
                Ok(ProcessRecord {
                    pid,
                    start_time: stat.start_time,
                })
            });
        tokio::spawn(reap(child, id.clone()));
        let process = match process {
            Ok(process) => process,
            Err(e) => {
                let _ = remove_instance_dir(&dir);
                return Err(CloudError::transient(format!(
                    "cannot inspect node process of {id}: {e}"
                )));
            }
        };
        let process_path = dir.join(PROCESS_FILE);
        if let Err(e) = write_json(&process_path, &process) {
            // Unrecorded, the node could not be told from a reused pid
            // later, so it must not live on.
            let _ = signal_node(&process, libc::SIGKILL);
            if e.kind() == io::ErrorKind::NotFound {
                tracing::info!(instance = %id, "instance destroyed while it was being launched");
                return Ok(None);
            }
            let _ = remove_instance_dir(&dir);
            return Err(storage_error("write process record", &process_path, &e));
        }
        tracing::info!(instance = %id, cluster = %request.cluster, pid = process.pid, "launched local node");
        Ok(Some(to_instance(record, None)))
    }

    fn spawn_node(&self, dir: &Path, log: std::fs::File) -> io::Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::new(&self.config.node_program);
        cmd.arg("node")
            .arg("--instance-dir")
            .arg(dir)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // The node must outlive this server: it is adopted after a
            // restart, and destroyed only through `destroy`.
            .kill_on_drop(false);
        // SAFETY: between fork and exec the child only calls setsid, which is
        // async-signal-safe. A new session detaches the node from the
        // server's terminal and process group, so signals meant for the
        // server (Ctrl-C, a supervisor's group kill) do not reach it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn()
    }

    /// Every live instance of this set matching `filter`; removes the dead.
    fn scan(&self, filter: &Tags) -> Result<Vec<Instance>, CloudError> {
        let entries = std::fs::read_dir(&self.config.dir)
            .map_err(|e| storage_error("read local driver directory", &self.config.dir, &e))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    return Err(storage_error(
                        "read local driver directory",
                        &self.config.dir,
                        &e,
                    ))
                }
            };
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with(BUILDING_PREFIX) {
                self.sweep_leftover(&entry.path(), &name);
                continue;
            }
            if !is_instance_id(&name) {
                continue;
            }
            match self.observe(&entry.path(), &name) {
                Ok(Some(instance)) if matches_filter(&instance.tags, filter) => {
                    found.push(instance)
                }
                Ok(_) => {}
                // One unreadable instance must not hide all the others; the
                // rest of the listing is still right.
                Err(e) => {
                    tracing::warn!(instance = %name, error = %e, "cannot read local instance; leaving it out of the listing")
                }
            }
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    /// Removes `dir`, a directory that is not an instance (no record), once
    /// it has been untouched for [`LEFTOVER_GRACE`], unless a node still
    /// runs in it or its record says it is another set's.
    fn sweep_leftover(&self, dir: &Path, name: &str) {
        let age = std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| at.elapsed().ok());
        if age.is_none_or(|age| age < LEFTOVER_GRACE) {
            return;
        }
        if let Ok(Some(record)) = read_json::<InstanceRecord>(&dir.join(RECORD_FILE)) {
            if !self.owns(&record) {
                return;
            }
        }
        if let Ok(Some(process)) = read_json::<ProcessRecord>(&dir.join(PROCESS_FILE)) {
            if liveness(&process) == Liveness::Running {
                return;
            }
        }
        match remove_instance_dir(dir) {
            Ok(()) => {
                tracing::info!(directory = %name, "removed a local instance directory left without a record (a launch or removal was cut short)")
            }
            Err(e) => {
                tracing::warn!(directory = %name, error = %e, "cannot remove a leftover local instance directory")
            }
        }
    }

    /// One instance directory: the instance if it is ours and alive. Ours
    /// and dead (exited, or never started) is removed, like a terminated VM.
    fn observe(&self, dir: &Path, name: &str) -> io::Result<Option<Instance>> {
        // No record: being removed right now, or the trace of a removal
        // cut short.
        let Some(record) = read_json::<InstanceRecord>(&dir.join(RECORD_FILE))? else {
            self.sweep_leftover(dir, name);
            return Ok(None);
        };
        if !self.owns(&record) {
            return Ok(None);
        }
        if record.id.as_str() != name {
            tracing::warn!(instance = %name, record_id = %record.id, "instance directory and record disagree on the ID; leaving it alone");
            return Ok(None);
        }
        match read_json::<ProcessRecord>(&dir.join(PROCESS_FILE))? {
            // Its launcher says whether the launch can still finish; a
            // record without one (written before records named it) cannot
            // if it is older than this server's opening of the directory.
            None if match record.launcher {
                Some(launcher) => liveness(&launcher) == Liveness::Gone,
                None => record.launched_at < self.opened_at,
            } =>
            {
                tracing::info!(instance = %name, "removing an instance whose node was never started (the server launching it stopped first)");
                remove_instance_dir(dir)?;
                return Ok(None);
            }
            None => {
                let age = (Utc::now() - record.launched_at)
                    .to_std()
                    .unwrap_or_default();
                if age > PENDING_RECORD_CUTOFF {
                    tracing::info!(instance = %name, "removing an instance whose node was never started (the server stopped while launching it)");
                    remove_instance_dir(dir)?;
                    return Ok(None);
                }
            }
            Some(process) => match liveness(&process) {
                Liveness::Gone => {
                    tracing::info!(instance = %name, pid = process.pid, "local node has exited; removing its instance");
                    remove_instance_dir(dir)?;
                    return Ok(None);
                }
                Liveness::Running => {
                    // A server restarted during a destroy has no watcher
                    // left to escalate; the listing does it instead.
                    if let Some(requested) = destroy_requested(dir)? {
                        if self.grace_left(requested).is_zero() {
                            tracing::info!(instance = %name, pid = process.pid, "node outlived its destroy grace period; sending SIGKILL");
                            signal_node(&process, libc::SIGKILL)?;
                        }
                    }
                }
            },
        }
        let address = read_text(&dir.join(ADDRESS_FILE))?.filter(|a| !a.is_empty());
        Ok(Some(to_instance(record, address)))
    }

    fn grace_left(&self, requested: DateTime<Utc>) -> Duration {
        let elapsed = (Utc::now() - requested).to_std().unwrap_or_default();
        self.config.grace.saturating_sub(elapsed)
    }

    async fn destroy(self: &Arc<Self>, id: &InstanceId) -> Result<(), CloudError> {
        if self.owned_record(id)?.is_none() {
            return Ok(());
        }
        let dir = self.instance_dir(id);
        let requested = request_destroy(&dir)
            .map_err(|e| storage_error("record destroy request in", &dir, &e))?;
        let process_path = dir.join(PROCESS_FILE);
        let process = read_json::<ProcessRecord>(&process_path)
            .map_err(|e| storage_error("read process record", &process_path, &e))?
            .filter(|p| liveness(p) == Liveness::Running);
        let Some(process) = process else {
            // Never started, or already exited; a launch still under way
            // sees the directory go and kills what it started.
            remove_instance_dir(&dir)
                .map_err(|e| storage_error("remove instance directory", &dir, &e))?;
            tracing::info!(instance = %id, "destroyed local instance");
            return Ok(());
        };
        let grace_left = self.grace_left(requested);
        let first = self
            .stopping
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone());
        let signal = if grace_left.is_zero() {
            Some(libc::SIGKILL)
        } else if first {
            Some(libc::SIGTERM)
        } else {
            None
        };
        if let Some(signal) = signal {
            if let Err(e) = signal_node(&process, signal) {
                if first {
                    self.stopping
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(id);
                }
                return Err(CloudError::transient(format!(
                    "cannot signal local node {id} (pid {}): {e}",
                    process.pid
                )));
            }
            tracing::info!(instance = %id, pid = process.pid, signal, "stopping local node");
        }
        if first {
            let inner = Arc::clone(self);
            let id = id.clone();
            let kill_at = tokio::time::Instant::now() + grace_left;
            tokio::spawn(async move {
                if stop_node(process, kill_at).await {
                    let dir = inner.instance_dir(&id);
                    match remove_instance_dir(&dir) {
                        Ok(()) => tracing::info!(instance = %id, "destroyed local instance"),
                        Err(e) => {
                            tracing::warn!(instance = %id, error = %e, "node stopped but its directory could not be removed; the next listing retries")
                        }
                    }
                }
                inner
                    .stopping
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
            });
        }
        Ok(())
    }

    async fn set_tags(&self, id: &InstanceId, tags: &Tags) -> Result<(), CloudError> {
        check_tag_update(tags)?;
        let _guard = self.records.lock().await;
        let Some(mut record) = self.owned_record(id)? else {
            return Err(CloudError::permanent(format!(
                "instance {id} does not exist"
            )));
        };
        record
            .tags
            .extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        let path = self.instance_dir(id).join(RECORD_FILE);
        write_json(&path, &record).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                CloudError::permanent(format!("instance {id} does not exist"))
            } else {
                storage_error("write instance record", &path, &e)
            }
        })
    }
}

/// When the first destroy of the instance in `dir` was asked for, recording
/// now if this is the first. Kept on disk so the grace period runs from the
/// first request across server restarts.
fn request_destroy(dir: &Path) -> io::Result<DateTime<Utc>> {
    if let Some(at) = destroy_requested(dir)? {
        return Ok(at);
    }
    let now = Utc::now();
    write_atomic(&dir.join(DESTROY_FILE), now.to_rfc3339().as_bytes())?;
    Ok(now)
}

fn destroy_requested(dir: &Path) -> io::Result<Option<DateTime<Utc>>> {
    let Some(text) = read_text(&dir.join(DESTROY_FILE))? else {
        return Ok(None);
    };
    match DateTime::parse_from_rfc3339(&text) {
        Ok(at) => Ok(Some(at.with_timezone(&Utc))),
        Err(e) => {
            // Damaged (by hand): treated as not asked for, so the node stays
            // listed and the next destroy writes a fresh time.
            tracing::warn!(dir = %dir.display(), error = %e, "ignoring an unreadable {DESTROY_FILE}");
            Ok(None)
        }
    }
}

/// Waits for a node this server started, so it does not linger as a zombie.
/// Nodes adopted after a restart are not our children; init reaps them.
async fn reap(mut child: tokio::process::Child, id: InstanceId) {
    match child.wait().await {
        Ok(status) => tracing::debug!(instance = %id, %status, "local node process exited"),
        Err(e) => tracing::warn!(instance = %id, error = %e, "cannot wait for local node process"),
    }
}

#[async_trait]
impl InstanceSet for LocalInstanceSet {
    fn id(&self) -> &InstanceSetId {
        &self.inner.id
    }

    fn max_batch(&self) -> u32 {
        self.inner.config.max_batch.max(1)
    }

    async fn create(&self, request: &CreateRequest) -> Result<Vec<Instance>, CloudError> {
        let max_batch = self.max_batch();
        if request.count == 0 || request.count > max_batch {
            return Err(CloudError::permanent(format!(
                "create count {} is outside 1..={max_batch} (the local driver's max_batch)",
                request.count
            )));
        }
        let tags = request.instance_tags(&self.inner.id);
        let mut made = Vec::with_capacity(request.count as usize);
        for _ in 0..request.count {
            match self.inner.launch(request, &tags).await {
                Ok(Some(instance)) => made.push(instance),
                Ok(None) => {}
                Err(e) if made.is_empty() => return Err(e),
                Err(e) => {
                    // Partial fulfilment: the caller asks again for the rest.
                    tracing::warn!(cluster = %request.cluster, made = made.len(), wanted = request.count, error = %e, "local driver launched fewer nodes than asked");
                    break;
                }
            }
        }
        if made.is_empty() {
            return Err(CloudError::transient(
                "every launched instance was destroyed while starting",
            ));
        }
        Ok(made)
    }

    async fn list(&self, filter: &Tags) -> Result<Vec<Instance>, CloudError> {
        let inner = Arc::clone(&self.inner);
        let filter = filter.clone();
        // A directory scan with a read of /proc per node: off the runtime.
        tokio::task::spawn_blocking(move || inner.scan(&filter))
            .await
            .map_err(|e| CloudError::transient(format!("local listing task failed: {e}")))?
    }

    async fn destroy(&self, id: &InstanceId) -> Result<(), CloudError> {
        self.inner.destroy(id).await
    }

    async fn set_tags(&self, id: &InstanceId, tags: &Tags) -> Result<(), CloudError> {
        self.inner.set_tags(id, tags).await
    }

    async fn probe(&self, instance: &Instance) -> Health {
        if !is_instance_id(instance.id.as_str()) {
            return Health::NotReady;
        }
        // The address on disk, not the instance's: the instance may have
        // been listed before the node wrote it, or be gone since.
        match read_text(&self.inner.instance_dir(&instance.id).join(ADDRESS_FILE)) {
            Ok(Some(address)) if !address.is_empty() => probe::probe(&address, &instance.id).await,
            Ok(_) => Health::NotReady,
            Err(e) => Health::of_failure(&e),
        }
    }

    async fn address(&self, instance: &Instance) -> Option<String> {
        if !is_instance_id(instance.id.as_str()) {
            return None;
        }
        match read_text(&self.inner.instance_dir(&instance.id).join(ADDRESS_FILE)) {
            Ok(Some(address)) if !address.is_empty() => Some(address),
            _ => None,
        }
    }

    /// The node's `node.log`: the agent's output and its workload's.
    async fn console(
        &self,
        id: &InstanceId,
        from: Option<u64>,
        limit: usize,
    ) -> Result<Option<Console>, CloudError> {
        if self.inner.owned_record(id)?.is_none() {
            return Ok(Some(Console::window(&[], from, limit)));
        }
        reach::console(self.inner.instance_dir(id), from, limit)
            .await
            .map(Some)
    }

    async fn exec(
        &self,
        id: &InstanceId,
        argv: &[String],
        timeout: Duration,
        limit: usize,
    ) -> Result<Option<ExecOutput>, CloudError> {
        let Some(record) = self.inner.owned_record(id)? else {
            return Err(CloudError::permanent(format!("node {id} is gone")));
        };
        reach::exec(&self.inner.instance_dir(id), &record, argv, timeout, limit)
            .await
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flotilla_domain::{ClusterName, InstanceType};

    use super::*;
    use flotilla_cloud::ownership_tags;

    fn config(dir: &Path, node_program: &str) -> LocalConfig {
        LocalConfig {
            dir: dir.to_owned(),
            node_program: PathBuf::from(node_program),
            grace: Duration::from_secs(1),
            max_batch: 3,
        }
    }

    fn set_id(id: &str) -> InstanceSetId {
        InstanceSetId::new(id).unwrap()
    }

    fn request(count: u32) -> CreateRequest {
        CreateRequest {
            cluster: ClusterName::new("c").unwrap(),
            pool: flotilla_domain::PoolName::new("p").unwrap(),
            instance_type: InstanceType::new("local.small").unwrap(),
            image: Some("img".into()),
            tags: Tags::from([("extra".to_owned(), "1".to_owned())]),
            init_data: None,
            workload: None,
            pool_version: None,
            count,
            shutdown_terminates: false,
            market: None,
        }
    }

    fn write_record(dir: &Path, id: &str, set: &str) {
        let record = InstanceRecord {
            id: InstanceId::new(id),
            instance_type: InstanceType::new("local.small").unwrap(),
            tags: ownership_tags(
                &set_id(set),
                &ClusterName::new("c").unwrap(),
                &InstanceType::new("local.small").unwrap(),
            ),
            image: None,
            init_data: None,
            workload: None,
            launched_at: Utc::now(),
            launcher: None,
        };
        std::fs::create_dir_all(dir.join(id)).unwrap();
        write_json(&dir.join(id).join(RECORD_FILE), &record).unwrap();
    }

    #[test]
    fn open_refuses_unusable_configs() {
        let dir = tempfile::tempdir().unwrap();
        let missing =
            LocalInstanceSet::open(config(dir.path(), "/nonexistent/flotilla"), set_id("s"));
        assert!(matches!(missing, Err(LocalError::NodeProgram { .. })));
        let not_executable = dir.path().join("not-executable");
        std::fs::write(&not_executable, "").unwrap();
        let err = LocalInstanceSet::open(
            config(dir.path(), not_executable.to_str().unwrap()),
            set_id("s"),
        )
        .err()
        .expect("a non-executable node program is refused");
        assert!(err.to_string().contains("not executable"), "{err}");
        let zero = LocalInstanceSet::open(
            LocalConfig {
                max_batch: 0,
                ..config(dir.path(), "/bin/true")
            },
            set_id("s"),
        );
        assert!(matches!(zero, Err(LocalError::ZeroBatch)));
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let err = LocalInstanceSet::open(config(&file.join("sub"), "/bin/true"), set_id("s"))
            .err()
            .expect("a directory under a file cannot be created");
        assert!(matches!(err, LocalError::CreateDir { .. }), "{err}");
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn open_logs_other_sets_once_and_leaves_them_alone() {
        let dir = tempfile::tempdir().unwrap();
        write_record(dir.path(), "local-01", "theirs");
        write_record(dir.path(), "local-02", "theirs");
        write_record(dir.path(), "local-03", "ours");
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let set = tracing::subscriber::with_default(subscriber, || {
            LocalInstanceSet::open(config(dir.path(), "/bin/true"), set_id("ours")).unwrap()
        });
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.matches("other instance sets").count(), 1, "{log}");
        assert!(log.contains("theirs: 2"), "{log}");
        assert!(!log.contains("ours: "), "{log}");
        assert!(set.config().dir.is_absolute());
        for id in ["local-01", "local-02", "local-03"] {
            assert!(dir.path().join(id).join(RECORD_FILE).exists());
        }
    }

    #[tokio::test]
    async fn batch_limits_are_permanent_errors() {
        let dir = tempfile::tempdir().unwrap();
        let set = LocalInstanceSet::open(config(dir.path(), "/bin/true"), set_id("s")).unwrap();
        assert_eq!(set.max_batch(), 3);
        for count in [0, 4] {
            let err = set.create(&request(count)).await.unwrap_err();
            assert!(matches!(err, CloudError::Permanent { .. }), "{err}");
        }
        assert_eq!(
            std::fs::read_dir(set.config().dir.clone()).unwrap().count(),
            0,
            "nothing was created"
        );
    }

    #[tokio::test]
    async fn unknown_and_malformed_ids_are_gone_not_errors() {
        let dir = tempfile::tempdir().unwrap();
        let set = LocalInstanceSet::open(config(dir.path(), "/bin/true"), set_id("s")).unwrap();
        for id in ["local-ffff", "../etc", "local-../x", "i-0123"] {
            set.destroy(&InstanceId::new(id))
                .await
                .expect("destroying what is not there succeeds");
            let err = set
                .set_tags(
                    &InstanceId::new(id),
                    &Tags::from([("a".to_owned(), "b".to_owned())]),
                )
                .await
                .unwrap_err();
            assert!(matches!(err, CloudError::Permanent { .. }), "{err}");
        }
    }

    /// `/bin/true` ignores the agent's arguments and exits at once: a node
    /// that dies is removed, like a terminated VM.
    #[tokio::test]
    async fn a_node_whose_process_exits_leaves_the_listing() {
        let dir = tempfile::tempdir().unwrap();
        let set = LocalInstanceSet::open(config(dir.path(), "/bin/true"), set_id("s")).unwrap();
        let made = set.create(&request(2)).await.unwrap();
        assert_eq!(made.len(), 2);
        for i in &made {
            assert_eq!(i.tags.get("extra").map(String::as_str), Some("1"));
            assert_eq!(i.instance_set(), Some("s"));
            let record: InstanceRecord = read_json(&set.instance_dir(&i.id).join(RECORD_FILE))
                .unwrap()
                .unwrap();
            assert_eq!(record.image.as_deref(), Some("img"));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !set.list(&Tags::new()).await.unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "exited nodes still listed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for i in &made {
            assert!(!set.instance_dir(&i.id).exists());
            assert_eq!(set.probe(i).await, Health::NotReady);
        }
    }
}
