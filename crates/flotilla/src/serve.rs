//! `flotilla serve`: wires the config to the store, the drivers, the engine
//! and the HTTP API, and shuts them down in order.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use flotilla_api::ratelimit::{RateClock, RateLimits};
use flotilla_api::AppState;
use flotilla_cloud::fake::FakeCloud;
use flotilla_cloud::{CloudMetrics, InstanceSet, Metered, SystemClock, Throttled};
use flotilla_domain::{ChangeKind, Username};
use flotilla_driver_ec2::Ec2InstanceSet;
use flotilla_driver_local::{LocalConfig, LocalInstanceSet};
use flotilla_engine::Engine;
use flotilla_github::{GithubClient, GithubConfig};
use flotilla_identity::{Identity, IdentityConfig, KeyRing, TokenIssuer};
use flotilla_store::{AccountStore, Store};
use flotilla_store_postgres::PostgresStore;
use flotilla_store_sqlite::SqliteStore;
use prometheus_client::registry::Registry;

use crate::config::{Config, DriverConfig};

/// How long a start waits for the data directory's lock. A server killed
/// while it was starting a node leaves that node's process holding a copy
/// of the lock until it has started (starting closes it), which under load
/// can take a moment; a live server holds it for good.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Takes an exclusive lock on the data directory, so two servers never
/// drive the same state (and the same local nodes) at once.
async fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let path = dir.join("server.lock");
    let file = File::create(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a descriptor we own; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(file);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "another flotilla server is using the data directory {}; stop it or pass a different --data-dir",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// This server's name among the servers on one database, kept in the data
/// directory so a restarted server has the same one (and takes its lease
/// back at once): the host's name and a random suffix, made on first start.
fn server_name(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("server-name");
    match std::fs::read_to_string(&path) {
        Ok(name) if !name.trim().is_empty() => return Ok(name.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut host = [0u8; 256];
    // SAFETY: the buffer is ours and its length is passed.
    let rc = unsafe { libc::gethostname(host.as_mut_ptr().cast(), host.len()) };
    let host = if rc == 0 {
        let end = host.iter().position(|&b| b == 0).unwrap_or(host.len());
        String::from_utf8_lossy(&host[..end]).into_owned()
    } else {
        "flotilla".to_owned()
    };
    let mut random = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .context("cannot read /dev/urandom")?;
    let name = format!("{host}-{:08x}", u32::from_be_bytes(random));
    let tmp = dir.join("server-name.tmp");
    std::fs::write(&tmp, format!("{name}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(name)
}

/// The sign-in service: keys under the data directory, the first admin,
/// GitHub if configured.
async fn identity(
    config: &Config,
    store: Arc<dyn AccountStore>,
    admin_password: Option<String>,
) -> anyhow::Result<Identity> {
    let access = &config.access;
    // The keys are the database's, shared by every server on it; a key
    // directory from before is read once to move its keys there.
    let key_dir = config.data_dir.join("keys");
    let stored = store.signing_keys().await?;
    let keys = if stored.is_empty() {
        KeyRing::load_or_create(&key_dir).context("cannot load the token signing keys")?
    } else {
        flotilla_identity::stored_key_ring(&stored).context("the signing keys in the database")?
    };
    let tokens = TokenIssuer::new(
        keys,
        access.issuer.clone(),
        access.access_token_ttl,
        access.cluster_token_ttl,
    );
    let github = match &access.github {
        None => None,
        Some(g) => Some(
            GithubClient::new(GithubConfig {
                api_url: g.api_url.clone(),
                org: g.org.clone(),
                timeout: g.timeout,
            })
            .context("config [github]")?,
        ),
    };
    flotilla_identity::prepare_password_verifier();
    let identity = Identity::new(
        store.clone(),
        tokens,
        github,
        IdentityConfig {
            refresh_token_ttl: access.refresh_token_ttl,
            max_concurrent_hashes: access.max_concurrent_hashes,
        },
    );
    let now = chrono::Utc::now();
    identity
        .share_keys(&key_dir, now)
        .await
        .context("cannot share the token signing keys through the database")?;
    let has_admin = |accounts: Vec<flotilla_store::AccountRecord>| {
        accounts
            .iter()
            .any(|a| a.level == flotilla_domain::Level::Admin)
    };
    match admin_password {
        Some(password) => {
            if identity
                .bootstrap_admin(&password, now)
                .await
                .context("FLOTILLA_ADMIN_PASSWORD")?
            {
                tracing::info!(
                    "created the first admin account, {}",
                    flotilla_identity::FIRST_ADMIN
                );
            } else {
                tracing::info!("an admin account exists; FLOTILLA_ADMIN_PASSWORD is ignored");
            }
        }
        None if !has_admin(store.list_accounts().await?) => {
            tracing::warn!("there is no admin account: restart with FLOTILLA_ADMIN_PASSWORD set to create account admin");
        }
        None => {}
    }
    Ok(identity)
}

pub async fn run(config: Config, admin_password: Option<String>) -> anyhow::Result<()> {
    // Bind before anything is made or started (the data directory
    // included), so a busy port changes nothing.
    // A server killed while starting a local node leaves that node's
    // process holding its socket until it has started: wait as long as
    // for the data directory's lock before calling the address taken.
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    let listener = loop {
        match tokio::net::TcpListener::bind(config.listen).await {
            Ok(l) => break l,
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
                "cannot listen on {}: another program (another flotilla server?) listens there; pick a free address with --listen ADDR (or `listen` in the config file)",
                config.listen
            ),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot listen on {}", config.listen))
            }
        }
    };
    let _lock = lock_data_dir(&config.data_dir).await?;
    let http = http_limits(&config);
    let store: Arc<dyn Store> = match &config.database_url {
        None => Arc::new(
            SqliteStore::open(&config.data_dir.join("flotilla.db"))
                .await
                .context("cannot open the state database")?,
        ),
        Some(url) => Arc::new(
            PostgresStore::connect(url.expose())
                .await
                .context("cannot open the state database")?,
        ),
    };
    let identity = Arc::new(identity(&config, store.clone(), admin_password).await?);
    let limits = Arc::new(RateLimits::new(
        config.access.requests_per_minute,
        config.access.login_failures,
        config.access.login_failure_window,
        RateClock::real(),
    ));
    let mut registry = Registry::default();
    let cloud_metrics = Arc::new(CloudMetrics::register(&mut registry));

    let mut sets: BTreeMap<String, Arc<dyn InstanceSet>> = BTreeMap::new();
    for (name, driver) in &config.drivers {
        let id = store.instance_set_id(name).await?;
        let set: Arc<dyn InstanceSet> = match driver {
            DriverConfig::Local {
                dir,
                grace,
                max_batch,
                ops_per_second,
            } => {
                let local = LocalInstanceSet::open(
                    LocalConfig {
                        dir: dir
                            .clone()
                            .unwrap_or_else(|| config.data_dir.join("drivers").join(name)),
                        node_program: std::env::current_exe()
                            .context("cannot find the flotilla binary")?,
                        grace: *grace,
                        max_batch: *max_batch,
                    },
                    id.clone(),
                )
                .with_context(|| format!("driver {name}"))?;
                Arc::new(Metered::new(
                    Throttled::new(local, *ops_per_second),
                    name.clone(),
                    cloud_metrics.clone(),
                ))
            }
            DriverConfig::Fake {
                faults,
                ops_per_second,
            } => {
                let fake = FakeCloud::new(faults.clone()).instance_set(id.as_str());
                Arc::new(Metered::new(
                    Throttled::new(fake, *ops_per_second),
                    name.clone(),
                    cloud_metrics.clone(),
                ))
            }
            DriverConfig::Ec2(ec2) => {
                // Lists once on opening: bad credentials or permissions stop
                // the server here, not at the first deploy.
                let set = Ec2InstanceSet::open(ec2.settings.clone(), id.clone())
                    .await
                    .with_context(|| {
                        format!("driver {name} (ec2, region {})", ec2.settings.region)
                    })?;
                Arc::new(Metered::new(
                    Throttled::new(set, ec2.ops_per_second),
                    name.clone(),
                    cloud_metrics.clone(),
                ))
            }
        };
        tracing::info!(driver = %name, instance_set = %id, "driver ready");
        sets.insert(name.clone(), set);
    }

    let mut engine_config = config.engine.clone();
    engine_config.server = server_name(&config.data_dir)?;
    let server = engine_config.server.clone();
    let (engine, tasks) = Engine::start(
        engine_config,
        store,
        sets,
        config.pools.clone(),
        config.default_pool.clone(),
        Arc::new(SystemClock),
        &mut registry,
    )
    .await?;

    // Accounts changed on any server revoke their access tokens here too,
    // and keys rotated or retired on any server are reloaded.
    let revocations = {
        let identity = identity.clone();
        let mut changes = engine.subscribe_changes();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match changes.recv().await {
                    Ok(change) if change.kind == ChangeKind::KeysChanged => {
                        match identity.reload_keys().await {
                            Ok(()) => {
                                tracing::info!(kid = %change.key, "signing keys changed; reloaded them")
                            }
                            Err(e) => tracing::error!(error = %e, "cannot reload the signing keys"),
                        }
                    }
                    Ok(change) => {
                        let revokes = matches!(
                            change.kind,
                            ChangeKind::AccountChanged | ChangeKind::AccountDeleted
                        );
                        if let (true, Ok(user)) = (revokes, Username::new(change.key.as_str())) {
                            identity.account_changed(&user, change.at);
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(
                            missed,
                            "the revocation follower fell behind the change feed"
                        );
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        })
    };
    let addr = listener.local_addr()?;
    let agent_url = config.jobs.server_url.clone().unwrap_or_else(|| {
        let mut reach = addr;
        if reach.ip().is_unspecified() {
            reach.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{reach}")
    });
    let kinds: BTreeMap<String, &'static str> = config
        .drivers
        .iter()
        .map(|(name, d)| (name.clone(), d.kind()))
        .collect();
    // Instances on other machines fetch this very program as their agent.
    let agent = if kinds.values().any(|k| *k == "ec2") {
        Some(Arc::new(
            tokio::task::spawn_blocking(agent_program)
                .await
                .context("hashing the agent program")??,
        ))
    } else {
        None
    };
    engine.set_attempt_boot(Arc::new(AgentBoot {
        program: std::env::current_exe().context("cannot find the flotilla binary")?,
        server: agent_url,
        kinds,
        agent_sha256: agent.as_ref().map(|a| a.sha256.clone()),
        server_url_set: config.jobs.server_url.is_some(),
    }));
    let artifacts: Arc<dyn flotilla_store::ArtifactStore> = match &config.jobs.s3 {
        Some(s3) => {
            let store = flotilla_artifacts_s3::S3Artifacts::open(s3)
                .await
                .map_err(|e| anyhow::anyhow!("jobs.s3: {e}"))?;
            // Said, not refused: S3 may be back before the first job.
            let checked = tokio::time::timeout(Duration::from_secs(10), store.check())
                .await
                .unwrap_or_else(|_| Err("no answer within 10s".to_owned()));
            if let Err(e) = checked {
                tracing::warn!(error = %e, "jobs' logs cannot be kept in S3 for now");
                eprintln!(
                    "warning: jobs' logs cannot be kept in {} for now: {e}",
                    store.url()
                );
            }
            Arc::new(store)
        }
        None => Arc::new(flotilla_store::LocalArtifacts::new(
            config
                .jobs
                .artifacts_dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("artifacts")),
        )),
    };
    let leading = if engine.leading() {
        "leading"
    } else {
        "following"
    };
    tracing::info!(%addr, data_dir = %config.data_dir.display(), %server, leading, "flotilla serving");
    let state = match &config.database_url {
        None => config.data_dir.display().to_string(),
        Some(url) => format!("{url:?}, data directory {}", config.data_dir.display()),
    };
    eprintln!("flotilla serving on http://{addr} (state in {state}; server {server}, {leading})");

    let housekeeping = {
        let limits = limits.clone();
        let engine = engine.clone();
        let retention = config.event_retention;
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                every.tick().await;
                limits.housekeeping();
                match engine.prune_events(retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(removed = n, "pruned the change feed"),
                    Err(e) => tracing::warn!(error = %e, "cannot prune the change feed"),
                }
            }
        })
    };
    let control = flotilla_control::Control::new(engine.clone(), config.catalog.clone())
        .with_agent(agent)
        .with_artifacts(artifacts)
        .with_mail(config.notify.smtp.is_some());
    let notifier = crate::notifier::Notifier::new(
        &config.notify,
        control.clone(),
        identity.clone(),
        server.to_string(),
    )
    .map_err(|e| anyhow::anyhow!("notifications: {e}"))?;
    let notifier = tokio::spawn(notifier.run());
    let mut dropboxes = Vec::new();
    if let Some(d) = &config.dropbox {
        let scan_seconds = crate::dropbox::register_metrics(&mut registry);
        if let Some(dir) = &d.dir {
            tracing::info!(dir = %dir.display(), "reading the drop box");
            let scanner =
                crate::dropbox::Dropbox::new(d, dir.clone(), control.clone(), identity.clone())
                    .with_metrics(scan_seconds.clone());
            dropboxes.push(tokio::spawn(scanner.run()));
        }
        if let Some(s3) = &d.s3 {
            let folders = flotilla_artifacts_s3::S3Folders::open(s3)
                .await
                .map_err(|e| anyhow::anyhow!("dropbox.s3: {e}"))?;
            tracing::info!(url = %folders.url(), "reading the drop box in S3");
            let scanner =
                crate::dropbox::Dropbox::new(d, PathBuf::new(), control.clone(), identity.clone())
                    .in_s3(folders)
                    .with_metrics(scan_seconds);
            dropboxes.push(tokio::spawn(scanner.run()));
        }
    }
    let app = flotilla_api::router(AppState {
        control,
        engine: engine.clone(),
        identity,
        limits,
        registry: Arc::new(registry),
    });
    crate::http::serve(listener, app, http, shutdown_signal()).await;
    housekeeping.abort();
    revocations.abort();
    for dropbox in dropboxes {
        dropbox.abort();
    }
    notifier.abort();
    tracing::info!("shutting down: draining reconciles");
    tasks.shutdown().await;
    Ok(())
}

/// The listener's limits; raises the open-file limit first, since the
/// connection cap is drawn from it.
fn http_limits(config: &Config) -> crate::http::HttpLimits {
    let fds = match crate::http::raise_fd_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit; assuming 1024");
            1024
        }
    };
    let max_connections = match config.http.max_connections {
        Some(n) => {
            if n as u64 + crate::http::RESERVED_FDS > fds {
                tracing::warn!(
                    max_connections = n,
                    open_file_limit = fds,
                    "http.max_connections leaves fewer than {} descriptors for the engine: node probes and cloud calls may fail under load",
                    crate::http::RESERVED_FDS
                );
            }
            n
        }
        None => crate::http::default_max_connections(fds),
    };
    tracing::info!(
        open_file_limit = fds,
        max_connections,
        header_read_timeout = ?config.http.header_read_timeout,
        "HTTP limits"
    );
    crate::http::HttpLimits {
        header_read_timeout: config.http.header_read_timeout,
        max_connections,
        drain: config.http.shutdown_drain,
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// This running program as the agent attempts' instances fetch: on Linux
/// read through `/proc/self/exe`, which stays this program even if its
/// file is replaced while the server runs.
fn agent_program() -> anyhow::Result<flotilla_control::AgentProgram> {
    use sha2::Digest;
    let own = std::path::PathBuf::from("/proc/self/exe");
    let path = if own.exists() {
        own
    } else {
        std::env::current_exe().context("cannot find the flotilla binary")?
    };
    let mut file = std::fs::File::open(&path)
        .with_context(|| format!("cannot read the flotilla binary at {}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buffer)
            .with_context(|| format!("cannot read the flotilla binary at {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    let sha256 = flotilla_domain::hex(&hasher.finalize());
    Ok(flotilla_control::AgentProgram { path, sha256 })
}

/// How a job attempt's instance starts its agent: on the local driver, the
/// node runs this binary in job mode, reaching the server at `server`; on
/// EC2, the user data fetches this binary from the server, checks its
/// SHA-256 and runs it.
struct AgentBoot {
    program: std::path::PathBuf,
    server: String,
    /// Each driver's kind, by name.
    kinds: BTreeMap<String, &'static str>,
    /// The SHA-256 of the program served to instances on other machines,
    /// if there may be any.
    agent_sha256: Option<String>,
    /// Whether `server` is `[jobs] server_url` (which instances on other
    /// machines may reach) rather than the listen address.
    server_url_set: bool,
}

use flotilla_driver_ec2::user_data::sh_quote;

impl AgentBoot {
    /// The agent's SHA-256 on a driver whose instances fetch it (ec2).
    fn sha256(&self) -> Result<&str, String> {
        self.agent_sha256
            .as_deref()
            .ok_or_else(|| "this server did not read its agent program".to_owned())
    }
}

impl flotilla_engine::AttemptBoot for AgentBoot {
    fn refuses(&self, driver: &str) -> Option<String> {
        match self.kinds.get(driver).copied() {
            Some("ec2") if !self.server_url_set => Some(format!(
                "instances on EC2 cannot reach this server at its listen address ({}): set [jobs] server_url to an address they reach",
                self.server
            )),
            Some("ec2") => self.sha256().err(),
            Some("local" | "fake") => None,
            Some(kind) => Some(format!(
                "jobs do not run on {kind} instances (the local and ec2 drivers start their agent); name a pool of one of those"
            )),
            None => Some(format!("driver {driver} is not configured")),
        }
    }

    fn init_data(&self, start: &flotilla_engine::AttemptStart<'_>) -> Result<String, String> {
        let (driver, job, attempt, token) = (start.driver, start.job, start.attempt, start.token);
        if let Some(why) = self.refuses(driver) {
            return Err(why);
        }
        Ok(match self.kinds.get(driver).copied() {
            Some("ec2") => flotilla_driver_ec2::user_data::job_agent(
                &self.server,
                job,
                attempt,
                token,
                start.lifetime,
                self.sha256()?,
            ),
            Some("local") => format!(
                "FLOTILLA_ATTEMPT_TOKEN={} exec {} node --job {job} --attempt {attempt} --server {}",
                sh_quote(token),
                sh_quote(&self.program.to_string_lossy()),
                sh_quote(&self.server),
            ),
            // Nothing runs on a fake instance: what a test plays the agent
            // with is the API.
            _ => format!("flotilla node --job {job} --attempt {attempt}"),
        })
    }

    fn warm_init_data(&self, start: &flotilla_engine::WarmStart<'_>) -> Result<String, String> {
        let (driver, token) = (start.driver, start.token);
        if let Some(why) = self.refuses(driver) {
            return Err(why);
        }
        Ok(match self.kinds.get(driver).copied() {
            Some("ec2") => flotilla_driver_ec2::user_data::warm_agent(
                &self.server,
                token,
                start.lifetime,
                self.sha256()?,
            ),
            Some("local") => format!(
                "FLOTILLA_WARM_TOKEN={} exec {} node --warm --server {}",
                sh_quote(token),
                sh_quote(&self.program.to_string_lossy()),
                sh_quote(&self.server),
            ),
            _ => "flotilla node --warm".to_owned(),
        })
    }
}
