//! The drop box (issue 14, seed 003), run by the leader: every
//! `scan_interval` it reads `DIR/USERNAME/` for `NAME.cf-create` and
//! `NAME.cf-delete`, and acts on each through the front door as that
//! account, as an API call would (its level's limits, the cluster-name
//! rule, organisations' budgets). A trigger is read once its size and time
//! have held for a scan, handled once by its path and digest (remembered
//! in the store, so a restart or a second leader does not act on it
//! again), and removed; what came of it is a status file beside it:
//! `NAME.cf-created` once the cluster runs (rewritten as it changes),
//! `NAME.cf-deleted`, or `NAME.cf-failed` with the stable error code and
//! the message. Links are not followed: a folder that is a link is left
//! alone; a trigger that is a link (or becomes one between its check and
//! its read), or not a plain file, or over 64 KiB, is refused; a status
//! file is a new file renamed into place.
//!
//! On a local disk a watch (inotify, through the `notify` crate) wakes the
//! scanner at once, and a trigger whose writer closed it (or that was
//! renamed into place) is read at once if it is not empty and has not
//! changed since: an empty one waits for the scan's rule, since a file
//! made empty first and written after would be read twice. Where no watch
//! can be set (a network file system, no inotify watches left) the scans
//! alone serve, as they always do.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_artifacts_s3::S3Folders;
use flotilla_control::{Control, Deploy, Destroy};
use flotilla_domain::{
    create_ask, trigger_cluster, Caller, ClusterName, ClusterState, DropboxTemplate, FileKind,
    Refusal, MAX_TRIGGER_BYTES,
};
use flotilla_identity::Identity;
use flotilla_store::HandledTrigger;
use prometheus_client::metrics::histogram::Histogram;

use crate::config::DropboxConfig;

/// After a change, how long to wait for more before rewriting status
/// files: a burst of changes is one rewrite.
const NOTICE_PAUSE: Duration = Duration::from_millis(100);

/// How long a handled trigger is remembered.
const REMEMBERED: Duration = Duration::from_secs(30 * 24 * 3600);

pub struct Dropbox {
    /// The local folders (unused when `s3` is set).
    dir: PathBuf,
    /// The folders in S3 instead.
    s3: Option<S3Folders>,
    templates: BTreeMap<String, DropboxTemplate>,
    control: Control,
    identity: Arc<Identity>,
    /// Each trigger's size and time at the last scan: one is read once
    /// they held for a scan (a file still being written is not).
    seen: HashMap<PathBuf, (u64, Option<SystemTime>)>,
    /// How often every folder is read.
    interval: Duration,
    /// Whether the last scan could not read `dir` (said once).
    unreadable: bool,
    /// Triggers handled that could not be removed, with their time of
    /// writing: left alone until written again.
    stuck: HashMap<PathBuf, u128>,
    /// The same for S3: by key, the version (ETag, time of putting) that
    /// could not be deleted.
    stuck_s3: HashMap<String, (String, String)>,
    /// The clusters made through the drop box whose `.cf-created` is kept,
    /// with the account whose folder it is in and what it says now.
    watched: BTreeMap<ClusterName, (String, Option<String>)>,
    /// Whether the clusters made through the drop box were read from the
    /// store this term (a leader that took over, or restarted, keeps
    /// their status files too).
    recalled: bool,
    /// Whether to watch the folders for new files.
    watch: bool,
    /// Triggers whose writer closed them (or that were renamed into
    /// place), with their size and time then: complete, if unchanged.
    closed: HashMap<PathBuf, (u64, Option<SystemTime>)>,
    /// How long each pass over the folders took.
    scan_seconds: Option<Histogram>,
}

/// Registers the drop box's metric: how long a pass over its folders
/// takes (reading them, and acting on what it found).
pub fn register_metrics(registry: &mut prometheus_client::registry::Registry) -> Histogram {
    let h = Histogram::new([
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0,
    ]);
    registry.register(
        "flotilla_dropbox_scan_seconds",
        "How long one pass over the drop box's folders took",
        h.clone(),
    );
    h
}

/// What the watch saw: a path, and whether it was closed after writing or
/// renamed into place.
type Seen = (PathBuf, bool);

impl Dropbox {
    /// The drop box in directory `dir`.
    pub fn new(
        config: &DropboxConfig,
        dir: PathBuf,
        control: Control,
        identity: Arc<Identity>,
    ) -> Self {
        Self {
            dir,
            s3: None,
            templates: config.templates.clone(),
            control,
            identity,
            seen: HashMap::new(),
            interval: config.scan_interval,
            unreadable: false,
            stuck: HashMap::new(),
            stuck_s3: HashMap::new(),
            watched: BTreeMap::new(),
            recalled: false,
            watch: config.watch,
            closed: HashMap::new(),
            scan_seconds: None,
        }
    }

    /// The drop box in S3 instead (no watch: the scans alone).
    pub fn in_s3(mut self, folders: S3Folders) -> Self {
        self.dir = PathBuf::from(folders.url());
        self.s3 = Some(folders);
        self.watch = false;
        self
    }

    /// What a trigger's record is keyed by: `ACCOUNT/NAME`, and `s3:`
    /// before it for one in S3 (a drop box may be both).
    fn key(&self, account: &str, name: &str) -> String {
        match self.s3 {
            Some(_) => format!("s3:{account}/{name}"),
            None => format!("{account}/{name}"),
        }
    }

    pub fn with_metrics(mut self, scan_seconds: Histogram) -> Self {
        self.scan_seconds = Some(scan_seconds);
        self
    }

    /// A watch on the drop box that sends what it sees to `tx`, or none
    /// (said once) where none can be set.
    fn watcher(&self, tx: tokio::sync::mpsc::Sender<Seen>) -> Option<notify::RecommendedWatcher> {
        use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
        use notify::{EventKind, RecursiveMode, Watcher};
        let handler = move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else {
                return;
            };
            let complete = matches!(
                event.kind,
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                    | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
            );
            for path in event.paths {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                // A trigger, or a new folder; not the status files this
                // writes.
                if FileKind::of(name).is_some_and(|(_, kind)| kind.is_trigger())
                    || (event.kind.is_create() && !name.starts_with(".flotilla-"))
                {
                    // A full queue is fine: the scan that drains it reads
                    // every folder.
                    let _ = tx.try_send((path, complete));
                }
            }
        };
        let config = notify::Config::default().with_follow_symlinks(false);
        let watched = notify::RecommendedWatcher::new(handler, config).and_then(|mut w| {
            w.watch(&self.dir, RecursiveMode::Recursive)?;
            Ok(w)
        });
        match watched {
            Ok(w) => {
                tracing::info!(dir = %self.dir.display(), "watching the drop box");
                Some(w)
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot watch the drop box; it is read every scan_interval only");
                None
            }
        }
    }

    /// Notes what the watch saw: a trigger closed after writing is
    /// complete as it is now. Gives the triggers seen, to be looked at
    /// before the next scan.
    fn saw(&mut self, seen: Vec<Seen>) -> Vec<PathBuf> {
        let mut triggers: Vec<PathBuf> = Vec::new();
        for (path, complete) in seen {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if FileKind::of(name).is_some_and(|(_, kind)| kind.is_trigger())
                && !triggers.contains(&path)
            {
                triggers.push(path.clone());
            }
            if !complete {
                continue;
            }
            if let Ok(meta) = blocking(|| std::fs::symlink_metadata(&path)) {
                if meta.is_file() && meta.len() > 0 {
                    self.closed.insert(path, (meta.len(), meta.modified().ok()));
                }
            }
        }
        triggers
    }

    /// Scans every `interval` while this server leads, and at once when
    /// the watch sees a trigger written.
    pub async fn run(mut self) {
        let interval = self.interval;
        if self.s3.is_none() {
            if let Err(e) = blocking(|| std::fs::create_dir_all(&self.dir)) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot make the drop box");
            }
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Seen>(4096);
        // Kept for as long as this runs: dropping it ends the watch.
        let _watcher = if self.watch { self.watcher(tx) } else { None };
        let mut last_forget = None;
        let mut notices = self.control.engine().store().change_notices();
        let mut next_scan = tokio::time::Instant::now();
        let mut watched: Vec<PathBuf> = Vec::new();
        loop {
            notices.borrow_and_update();
            if let Some(fence) = self.control.engine().fence() {
                if !self.recalled {
                    self.recalled = self.recall().await;
                }
                let due = tokio::time::Instant::now() >= next_scan;
                if !due && !watched.is_empty() {
                    // Only what the watch saw; every folder at the next scan.
                    let paths = std::mem::take(&mut watched);
                    self.look_at(&paths).await;
                }
                if due {
                    let started = std::time::Instant::now();
                    let scanned = self.scan().await;
                    if let Some(h) = &self.scan_seconds {
                        h.observe(started.elapsed().as_secs_f64());
                    }
                    match scanned {
                        Err(e) if !self.unreadable => {
                            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the drop box");
                            self.unreadable = true;
                        }
                        Err(_) => {}
                        Ok(()) => self.unreadable = false,
                    }
                }
                if due {
                    next_scan = tokio::time::Instant::now() + interval;
                }
                self.write_statuses().await;
                if last_forget
                    .is_none_or(|t: tokio::time::Instant| t.elapsed() > Duration::from_secs(3600))
                {
                    let before = self.control.engine().now()
                        - chrono::Duration::from_std(REMEMBERED).unwrap_or_default();
                    if let Err(e) = self
                        .control
                        .engine()
                        .store()
                        .forget_triggers(before, fence)
                        .await
                    {
                        tracing::warn!(error = %e, "cannot forget old drop-box triggers");
                    }
                    last_forget = Some(tokio::time::Instant::now());
                }
            } else {
                self.seen.clear();
                self.closed.clear();
                self.recalled = false;
                next_scan = tokio::time::Instant::now() + interval;
            }
            // Until the next scan, a file the watch saw, or a change (a
            // cluster's status files follow it; changes close together are
            // taken as one, while the watch is still heard at once).
            let mut seen = Vec::new();
            let mut statuses_at: Option<tokio::time::Instant> = None;
            loop {
                let statuses = statuses_at.unwrap_or(next_scan);
                tokio::select! {
                    () = tokio::time::sleep_until(next_scan) => break,
                    Some(first) = rx.recv() => {
                        seen.push(first);
                        break;
                    }
                    Ok(()) = notices.changed(), if statuses_at.is_none() => {
                        statuses_at = Some(tokio::time::Instant::now() + NOTICE_PAUSE);
                    }
                    () = tokio::time::sleep_until(statuses), if statuses_at.is_some() => break,
                }
            }
            while let Ok(more) = rx.try_recv() {
                seen.push(more);
            }
            watched = self.saw(seen);
        }
    }

    /// Watches the clusters the drop box made and did not destroy, by
    /// the triggers handled lately; false if the store could not say.
    async fn recall(&mut self) -> bool {
        let since = self.control.engine().now()
            - chrono::Duration::from_std(REMEMBERED).unwrap_or_default();
        let handled = match self.control.engine().store().handled_triggers(since).await {
            Ok(handled) => handled,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the drop-box triggers handled");
                return false;
            }
        };
        // The latest of each account's cluster says, whichever place (a
        // drop box may be a directory and S3) it came from; this place
        // watches it if its latest was a deploy here.
        let mut latest: BTreeMap<(String, String), (String, bool)> = BTreeMap::new();
        let s3 = self.s3.is_some();
        for t in handled {
            if t.outcome == "deployed" || t.outcome == "destroyed" {
                let here = t.path.starts_with("s3:") == s3;
                latest.insert((t.account, t.cluster), (t.outcome, here));
            }
        }
        for ((account, cluster), (outcome, here)) in latest {
            if let (Ok(name), "deployed", true) =
                (ClusterName::new(&cluster), outcome.as_str(), here)
            {
                self.watched.entry(name).or_insert((account, None));
            }
        }
        true
    }

    async fn scan(&mut self) -> std::io::Result<()> {
        if let Some(folders) = self.s3.clone() {
            return self.scan_s3(&folders).await.map_err(std::io::Error::other);
        }
        // The folders are read off the runtime's workers (a share on the
        // network may be slow); the triggers are acted on after.
        let triggers = blocking(|| triggers_in(&self.dir))?;
        let present: std::collections::HashSet<&PathBuf> =
            triggers.iter().map(|(_, path, _)| path).collect();
        self.seen.retain(|p, _| present.contains(p));
        self.stuck.retain(|p, _| present.contains(p));
        self.closed.retain(|p, _| present.contains(p));
        let mut callers: HashMap<String, Result<Caller, Refusal>> = HashMap::new();
        for (account, path, kind) in &triggers {
            if !callers.contains_key(account) {
                let caller = self.caller_of(account).await;
                callers.insert(account.clone(), caller);
            }
            let caller = callers[account].clone();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let stem = name.strip_suffix(kind.suffix()).unwrap_or(name);
            self.trigger(account, path, stem, *kind, caller).await;
        }
        Ok(())
    }

    /// Looks at the triggers the watch saw, as a scan would: each must be
    /// a file right in an account's folder (no link on the way).
    async fn look_at(&mut self, paths: &[PathBuf]) {
        for path in paths {
            let Some(folder) = path.parent() else {
                continue;
            };
            if folder.parent() != Some(self.dir.as_path()) {
                continue;
            }
            let real = blocking(|| std::fs::symlink_metadata(folder)).is_ok_and(|m| m.is_dir());
            let account = folder.file_name().and_then(|n| n.to_str());
            let name = path.file_name().and_then(|n| n.to_str());
            let (Some(account), Some(name), true) = (account, name, real) else {
                continue;
            };
            let Some((stem, kind)) = FileKind::of(name).filter(|(_, k)| k.is_trigger()) else {
                continue;
            };
            let caller = self.caller_of(account).await;
            let (account, stem) = (account.to_owned(), stem.to_owned());
            self.trigger(&account, path, &stem, kind, caller).await;
        }
    }

    /// The caller a folder's triggers act as, or why none.
    async fn caller_of(&self, account: &str) -> Result<Caller, Refusal> {
        match self.identity.caller_of(Some(account)).await {
            Ok(mut caller) => {
                self.control.engine().admit_org_clusters(&mut caller);
                Ok(caller)
            }
            Err(e) => Err(Refusal::new(
                "unknown_account",
                format!("{account:?} is not an account of this server ({e})"),
            )),
        }
    }

    async fn trigger(
        &mut self,
        account: &str,
        path: &Path,
        stem: &str,
        kind: FileKind,
        caller: Result<Caller, Refusal>,
    ) {
        let Ok(meta) = blocking(|| std::fs::symlink_metadata(path)) else {
            return;
        };
        let file_name = path.file_name().unwrap_or_default().to_string_lossy();
        let key = self.key(account, &file_name);
        // A trigger is its content as of its last write: the same file seen
        // again (a restart before it was removed) is handled once; the same
        // words written again later are a new trigger.
        let written = written_at(&meta);
        if self.stuck.get(path) == Some(&written) {
            return;
        }
        let (content, digest) = if meta.file_type().is_symlink() {
            (
                Err(Refusal::new(
                    "invalid_trigger",
                    "a trigger may not be a link",
                )),
                format!("link@{written}"),
            )
        } else if !meta.is_file() {
            (
                Err(Refusal::new(
                    "invalid_trigger",
                    "a trigger must be a plain file",
                )),
                format!("not a file@{written}"),
            )
        } else if meta.len() > MAX_TRIGGER_BYTES {
            (
                Err(Refusal::new(
                    "trigger_too_large",
                    format!(
                        "{} bytes; a trigger holds at most {MAX_TRIGGER_BYTES}",
                        meta.len()
                    ),
                )),
                format!("size {}@{written}", meta.len()),
            )
        } else {
            // Read once it held still for a scan, and was last written a
            // scan ago at least (a copy that stalled is not read half done),
            // or at once if its writer closed it and it has not changed
            // since.
            let now = (meta.len(), meta.modified().ok());
            let settled = meta
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= self.interval);
            let held = self.seen.insert(path.to_owned(), now) == Some(now);
            let closed = self.closed.get(path) == Some(&now);
            if !(closed || held && settled) {
                return;
            }
            match blocking(|| read_same(path, &meta)) {
                Ok(bytes) => {
                    let digest = format!("{}@{written}", flotilla_domain::sha256_hex(&bytes));
                    (Ok(bytes), digest)
                }
                Err(refused) => (Err(refused), format!("swapped@{written}")),
            }
        };
        let Some(handled) = self
            .handle(account, &key, &digest, stem, kind, content, caller)
            .await
        else {
            return;
        };
        self.answer(account, stem, &file_name, &handled).await;
        // Removed unless written again meanwhile (that is a new trigger).
        let (unchanged, removed) = blocking(|| {
            let unchanged =
                std::fs::symlink_metadata(path).is_ok_and(|m| written_at(&m) == written);
            (unchanged, unchanged && std::fs::remove_file(path).is_ok())
        });
        if removed {
            self.seen.remove(path);
        } else if unchanged {
            tracing::warn!(trigger = %key, "cannot remove a drop-box trigger handled; it is left alone until written again");
            self.stuck.insert(path.to_owned(), written);
        }
    }

    /// What came of the trigger keyed `key` with content `digest`: looked
    /// up, or acted on and noted now; none if that could not be done (it
    /// is tried again at the next scan).
    #[allow(clippy::too_many_arguments)]
    async fn handle(
        &self,
        account: &str,
        key: &str,
        digest: &str,
        stem: &str,
        kind: FileKind,
        content: Result<Vec<u8>, Refusal>,
        caller: Result<Caller, Refusal>,
    ) -> Option<HandledTrigger> {
        let store = self.control.engine().store().clone();
        let handled = match store.handled_trigger(key, digest).await {
            Ok(Some(handled)) => handled,
            Ok(None) => {
                let fence = self.control.engine().fence()?;
                let (cluster, outcome) = self.act(stem, kind, content, caller).await;
                let handled = HandledTrigger {
                    path: key.to_owned(),
                    digest: digest.to_owned(),
                    account: account.to_owned(),
                    cluster,
                    outcome: outcome
                        .as_ref()
                        .map_or_else(|r| r.code.clone(), |o| o.0.clone()),
                    message: outcome.map_or_else(|r| r.message, |o| o.1),
                    handled_at: self.control.engine().now(),
                };
                match store.note_trigger(&handled, fence).await {
                    Ok(true) => handled,
                    // Another server handled it first: what it did holds.
                    Ok(false) => store.handled_trigger(key, digest).await.ok()??,
                    Err(e) => {
                        tracing::warn!(trigger = %key, error = %e, "cannot note a drop-box trigger; trying again");
                        return None;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(trigger = %key, error = %e, "cannot read a drop-box trigger's record");
                return None;
            }
        };
        tracing::info!(trigger = %key, outcome = %handled.outcome, "handled a drop-box trigger");
        Some(handled)
    }

    /// Writes what came of a trigger beside it, and watches the cluster it
    /// deployed.
    async fn answer(
        &mut self,
        account: &str,
        stem: &str,
        file_name: &str,
        handled: &HandledTrigger,
    ) {
        match handled.outcome.as_str() {
            "deployed" => {
                if let Ok(cluster) = ClusterName::new(&handled.cluster) {
                    self.remove_status(account, &handled.cluster, FileKind::Failed)
                        .await;
                    self.remove_status(account, &handled.cluster, FileKind::Deleted)
                        .await;
                    self.watched
                        .insert(cluster, (handled.account.clone(), None));
                }
            }
            "destroyed" => {
                if let Ok(cluster) = ClusterName::new(&handled.cluster) {
                    self.watched.remove(&cluster);
                }
                self.remove_status(account, &handled.cluster, FileKind::Created)
                    .await;
                self.remove_status(account, &handled.cluster, FileKind::Failed)
                    .await;
                self.write_status(
                    account,
                    &handled.cluster,
                    FileKind::Deleted,
                    &serde_json::json!({"cluster": handled.cluster, "state": "destroying", "message": handled.message}),
                )
                .await;
            }
            code => {
                self.write_status(
                    account,
                    stem,
                    FileKind::Failed,
                    &serde_json::json!({"trigger": file_name, "code": code, "message": handled.message}),
                )
                .await;
            }
        }
    }

    /// Writes status file `STEM.KIND` (JSON) in `account`'s folder; false
    /// if it could not be.
    async fn write_status(
        &self,
        account: &str,
        stem: &str,
        kind: FileKind,
        value: &serde_json::Value,
    ) -> bool {
        let text = serde_json::to_string_pretty(value).expect("json");
        self.write_status_text(account, stem, kind, &text).await
    }

    async fn write_status_text(
        &self,
        account: &str,
        stem: &str,
        kind: FileKind,
        text: &str,
    ) -> bool {
        match &self.s3 {
            None => write_text(&self.dir.join(account), stem, kind, text),
            Some(folders) => {
                let name = format!("{account}/{stem}{}", kind.suffix());
                match folders.put(&name, format!("{text}\n")).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot write a drop-box status file");
                        false
                    }
                }
            }
        }
    }

    async fn remove_status(&self, account: &str, stem: &str, kind: FileKind) {
        match &self.s3 {
            None => remove(&self.dir.join(account), stem, kind),
            Some(folders) => {
                let name = format!("{account}/{stem}{}", kind.suffix());
                if let Err(e) = folders.delete(&name).await {
                    tracing::warn!(error = %e, "cannot remove a drop-box status file");
                }
            }
        }
    }

    /// One pass over the drop box in S3: every trigger object under the
    /// prefix, read as the version listed (objects are whole once put, so
    /// none is read half written), handled once by its key and ETag, then
    /// deleted.
    async fn scan_s3(&mut self, folders: &S3Folders) -> Result<(), String> {
        let listed = folders.list().await?;
        self.stuck_s3
            .retain(|name, _| listed.iter().any(|o| &o.name == name));
        let mut callers: HashMap<String, Result<Caller, Refusal>> = HashMap::new();
        for object in listed {
            let Some((account, name)) = object.name.split_once('/') else {
                continue;
            };
            if name.contains('/') {
                continue;
            }
            let Some((stem, kind)) = FileKind::of(name).filter(|(_, k)| k.is_trigger()) else {
                continue;
            };
            // Only an account's folder: a key like `PREFIX/../x` or
            // `PREFIX//x` is no one's, and is left alone.
            if flotilla_domain::Username::new(account).is_err() {
                continue;
            }
            let version = (object.etag.clone(), object.modified.clone());
            if self.stuck_s3.get(&object.name) == Some(&version) {
                continue;
            }
            let (account, name, stem) = (account.to_owned(), name.to_owned(), stem.to_owned());
            if !callers.contains_key(&account) {
                let caller = self.caller_of(&account).await;
                callers.insert(account.clone(), caller);
            }
            let caller = callers[&account].clone();
            let key = self.key(&account, &name);
            // Its content (the ETag) as of when it was put: the same words
            // put again later are a new trigger.
            let digest = format!("etag {}@{}", object.etag, object.modified);
            let content = if u64::try_from(object.size).unwrap_or(u64::MAX) > MAX_TRIGGER_BYTES {
                Err(Refusal::new(
                    "trigger_too_large",
                    format!(
                        "{} bytes; a trigger holds at most {MAX_TRIGGER_BYTES}",
                        object.size
                    ),
                ))
            } else {
                match folders.get(&object.name, &object.etag).await {
                    Ok(Some(bytes)) => Ok(bytes),
                    // Changed or gone since the listing: the next scan.
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read a drop-box trigger");
                        continue;
                    }
                }
            };
            let Some(handled) = self
                .handle(&account, &key, &digest, &stem, kind, content, caller)
                .await
            else {
                continue;
            };
            self.answer(&account, &stem, &name, &handled).await;
            // Deleted unless put again meanwhile (that is a new trigger); one
            // that cannot be is left alone until put again.
            if let Err(e) = folders
                .delete_version(&object.name, &object.etag, &object.modified)
                .await
            {
                tracing::warn!(trigger = %key, error = %e, "cannot delete a drop-box trigger handled; it is left alone until put again (the server needs s3:DeleteObject there)");
                self.stuck_s3.insert(object.name.clone(), version);
            }
        }
        Ok(())
    }

    /// Does what a trigger asks: the cluster it names, and `deployed` or
    /// `destroyed` with a message, or why not.
    async fn act(
        &self,
        stem: &str,
        kind: FileKind,
        content: Result<Vec<u8>, Refusal>,
        caller: Result<Caller, Refusal>,
    ) -> (String, Result<(String, String), Refusal>) {
        let cluster_name = stem.to_owned();
        let outcome = async {
            let content = content?;
            let cluster = trigger_cluster(stem)?;
            let caller = caller?;
            match kind {
                FileKind::Create => {
                    let ask = create_ask(cluster.clone(), parse(&content)?, &self.templates)?;
                    let view = self
                        .control
                        .run(
                            &caller,
                            Deploy {
                                cluster: cluster.clone(),
                                node_capacity: i64::from(ask.nodes),
                                time_to_live: ask.ttl.as_secs() as i64,
                                is_public: Some(ask.public),
                                pool: ask.pool,
                                workload: None,
                            },
                        )
                        .await
                        .map_err(refusal)?;
                    Ok((
                        "deployed".to_owned(),
                        format!(
                            "{} nodes until {}",
                            view.node_capacity,
                            view.expires_at.map_or("-".to_owned(), |t| t.to_rfc3339())
                        ),
                    ))
                }
                _ => {
                    self.control
                        .run(&caller, Destroy { cluster })
                        .await
                        .map_err(refusal)?;
                    Ok(("destroyed".to_owned(), "destroyed".to_owned()))
                }
            }
        }
        .await;
        (cluster_name, outcome)
    }

    /// Writes each watched cluster's `.cf-created` once it runs, again
    /// when what it says changes, while its folder's account may see it;
    /// once it is gone (destroyed however, or expired) or no longer the
    /// account's, `.cf-deleted` takes its place and it is no longer
    /// watched.
    async fn write_statuses(&mut self) {
        let mut callers: HashMap<String, Option<Caller>> = HashMap::new();
        let watched = std::mem::take(&mut self.watched);
        for (cluster, (account, said)) in watched {
            if !callers.contains_key(&account) {
                let caller = self.caller_of(&account).await.ok();
                callers.insert(account.clone(), caller);
            }
            let view = match &callers[&account] {
                Some(caller) => self.control.status(caller, &cluster).ok(),
                None => None,
            };
            let state = view.as_ref().map(|v| v.state);
            match (view, state) {
                (Some(view), Some(ClusterState::Running)) => {
                    let addresses: Vec<&str> = view
                        .nodes
                        .iter()
                        .filter_map(|n| n.address.as_deref())
                        .collect();
                    let status = serde_json::json!({
                        "cluster": cluster.as_str(),
                        "state": "running",
                        "login": addresses.first(),
                        "addresses": addresses,
                        "nodes": view.node_capacity,
                        "expires_at": view.expires_at,
                    });
                    let text = serde_json::to_string_pretty(&status).expect("json");
                    let said = if said.as_deref() != Some(text.as_str())
                        && self
                            .write_status_text(&account, cluster.as_str(), FileKind::Created, &text)
                            .await
                    {
                        Some(text)
                    } else {
                        said
                    };
                    self.watched.insert(cluster, (account, said));
                }
                (_, Some(ClusterState::Deploying | ClusterState::Asleep)) => {
                    self.watched.insert(cluster, (account, said));
                }
                _ => {
                    self.remove_status(&account, cluster.as_str(), FileKind::Created)
                        .await;
                    self.write_status(
                        &account,
                        cluster.as_str(),
                        FileKind::Deleted,
                        &serde_json::json!({"cluster": cluster.as_str(), "state": "gone"}),
                    )
                    .await;
                }
            }
        }
    }
}

/// Runs file-system calls where blocking is allowed: the runtime moves
/// its other work off this worker meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Every trigger in `dir`'s folders: its account, path and kind. Folders
/// that are links, and names that are not UTF-8, are no account's.
fn triggers_in(dir: &Path) -> std::io::Result<Vec<(String, PathBuf, FileKind)>> {
    let mut found = Vec::new();
    for folder in std::fs::read_dir(dir)? {
        let Ok(folder) = folder else {
            continue;
        };
        if !folder.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Some(account) = folder.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Ok(files) = std::fs::read_dir(folder.path()) else {
            continue;
        };
        for file in files.flatten() {
            let Some(name) = file.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if let Some((_, kind)) = FileKind::of(&name).filter(|(_, k)| k.is_trigger()) {
                found.push((account.clone(), file.path(), kind));
            }
        }
    }
    Ok(found)
}

/// The content of the file at `path`, if it is still the plain file
/// `meta` describes: one swapped for a link since (to read a file outside
/// the drop box) is refused, as the opened file is not the one looked at.
fn read_same(path: &Path, meta: &std::fs::Metadata) -> Result<Vec<u8>, Refusal> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let swapped = || Refusal::new("invalid_trigger", "a trigger may not be a link");
    use std::os::unix::fs::OpenOptionsExt;
    // Never through a link, and never waiting on a pipe.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|_| swapped())?;
    let opened = file.metadata().map_err(|_| swapped())?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) || !opened.is_file() {
        return Err(swapped());
    }
    let mut bytes = Vec::new();
    file.by_ref()
        .take(MAX_TRIGGER_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|_| swapped())?;
    if bytes.len() as u64 > MAX_TRIGGER_BYTES {
        return Err(Refusal::new(
            "trigger_too_large",
            format!("a trigger holds at most {MAX_TRIGGER_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

/// When a file was last written, in nanoseconds (0 if unknown).
fn written_at(meta: &std::fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// A trigger's content as JSON (`{…}`) or TOML; None if empty.
fn parse(content: &[u8]) -> Result<Option<serde_json::Value>, Refusal> {
    let text = std::str::from_utf8(content)
        .map_err(|_| Refusal::new("invalid_trigger", "not UTF-8 text"))?
        .trim();
    if text.is_empty() {
        return Ok(None);
    }
    if text.starts_with('{') {
        return serde_json::from_str(text)
            .map(Some)
            .map_err(|e| Refusal::new("invalid_trigger", format!("not JSON: {e}")));
    }
    let table: toml::Table = toml::from_str(text)
        .map_err(|e| Refusal::new("invalid_trigger", format!("neither JSON nor TOML: {e}")))?;
    serde_json::to_value(table)
        .map(Some)
        .map_err(|e| Refusal::new("invalid_trigger", e.to_string()))
}

/// What the API would answer for `e`: its stable code and message.
fn refusal(e: flotilla_engine::EngineError) -> Refusal {
    let e = flotilla_api::ApiError::from(e);
    Refusal::new(e.code, e.message)
}

/// Writes a status file whole (a temporary file renamed over it); false
/// if it could not.
fn write_text(folder: &Path, stem: &str, kind: FileKind, text: &str) -> bool {
    blocking(|| write_text_now(folder, stem, kind, text))
}

fn write_text_now(folder: &Path, stem: &str, kind: FileKind, text: &str) -> bool {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let path = folder.join(format!("{stem}{}", kind.suffix()));
    // A new file under a short name of its own (anything already there, a
    // link included, makes the write fail rather than be followed), then
    // renamed over the status file's name (a link there is replaced, not
    // followed).
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temporary = folder.join(format!(".flotilla-{}-{n}.tmp", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{text}\n").as_bytes()))
        .and_then(|()| std::fs::rename(&temporary, &path));
    if let Err(e) = &written {
        let _ = std::fs::remove_file(&temporary);
        tracing::warn!(path = %path.display(), error = %e, "cannot write a drop-box status file");
    }
    written.is_ok()
}

fn remove(folder: &Path, stem: &str, kind: FileKind) {
    let path = folder.join(format!("{stem}{}", kind.suffix()));
    let _ = blocking(|| std::fs::remove_file(path));
}
