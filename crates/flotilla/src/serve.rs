//! `flotilla serve`: wires the config to the store, the drivers, the engine
//! and the HTTP API, and shuts them down in order.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use flotilla_api::ratelimit::{RateClock, RateLimits};
use flotilla_api::AppState;
use flotilla_cloud::fake::FakeCloud;
use flotilla_cloud::{CloudMetrics, InstanceSet, Metered, SystemClock, Throttled};
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

/// The sign-in service: keys under the data directory, the first admin,
/// GitHub if configured.
async fn identity(
    config: &Config,
    store: Arc<dyn AccountStore>,
    admin_password: Option<String>,
) -> anyhow::Result<Identity> {
    let access = &config.access;
    let keys = KeyRing::load_or_create(config.data_dir.join("keys"))
        .context("cannot load the token signing keys")?;
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
        },
    );
    let now = chrono::Utc::now();
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
    let _lock = lock_data_dir(&config.data_dir).await?;
    // Bind before anything is started, so a busy port changes nothing.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let (store, _server_lock): (Arc<dyn Store>, _) = match &config.database_url {
        None => (
            Arc::new(
                SqliteStore::open(&config.data_dir.join("flotilla.db"))
                    .await
                    .context("cannot open the state database")?,
            ),
            None,
        ),
        Some(url) => {
            let store = PostgresStore::connect(url.expose())
                .await
                .context("cannot open the state database")?;
            let lock = store.lock_server().await??;
            (Arc::new(store), Some(lock))
        }
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

    let (engine, tasks) = Engine::start(
        config.engine.clone(),
        store,
        sets,
        config.pools.clone(),
        config.default_pool.clone(),
        Arc::new(SystemClock),
        &mut registry,
    )
    .await?;

    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "flotilla serving");
    let state = match &config.database_url {
        None => config.data_dir.display().to_string(),
        Some(url) => format!("{url:?}, data directory {}", config.data_dir.display()),
    };
    eprintln!("flotilla serving on http://{addr} (state in {state})");

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
    let app = flotilla_api::router(AppState {
        engine: engine.clone(),
        identity,
        limits,
        registry: Arc::new(registry),
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .context("HTTP server failed")?;
    housekeeping.abort();
    tracing::info!("shutting down: draining reconciles");
    tasks.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
