//! Pools: written through the API (apply, retire), shown with their
//! history, and what went wrong making their nodes.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use flotilla_domain::{
    authorize_pool_fields, authorize_pool_write, image_from, Caller, ClusterName, PoolDocument,
    PoolName, PoolOwner, PoolSource, PoolSpec, Problem, SharedConfigName, POOL_SCHEMA_VERSION,
};
use flotilla_engine::EngineError;
use flotilla_store::{PoolRecord, PoolWrite, StoreError};

use crate::{sealed, Command, Control, PoolCatalog};

/// The most errors of a pool one answer carries.
pub const MAX_POOL_ERRORS: usize = 1000;

impl Control {
    /// Pool `pool`'s errors that the caller may see (those of clusters it
    /// may see the status of), latest first, at most `limit`.
    pub async fn pool_errors(
        &self,
        caller: &Caller,
        pool: &str,
        limit: usize,
    ) -> Result<Vec<flotilla_domain::PoolError>, EngineError> {
        let pool = self.known_pool(pool)?;
        let engine = self.engine();
        // Asked of the store by name, so that others' errors cannot crowd
        // out the caller's: the clusters it may act on (its organisations'
        // included) and the public ones.
        let only: Option<Vec<ClusterName>> = (!caller.is_admin()).then(|| {
            let mut names: BTreeSet<ClusterName> = match caller.account {
                Some(_) => caller.allowed.clone(),
                None => BTreeSet::new(),
            };
            names.extend(
                engine
                    .cluster_names()
                    .into_iter()
                    .filter(|c| engine.record(c).is_some_and(|r| r.is_public)),
            );
            names.into_iter().collect()
        });
        let mut errors = engine
            .pool_errors(&pool, only.as_deref(), limit.min(MAX_POOL_ERRORS))
            .await?;
        errors.retain(|e| self.may_see(caller, &e.key.cluster).is_ok());
        Ok(errors)
    }
}

/// A pool as `flotilla pool show` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolDetail {
    pub name: PoolName,
    pub source: PoolSource,
    /// What it is, as its author wrote it (normalised).
    pub document: PoolDocument,
    /// When and by whom its current version was written (stored pools).
    pub updated: Option<(DateTime<Utc>, String)>,
    /// The pool a deploy naming none uses.
    pub is_default: bool,
    /// Clusters whose records name it.
    pub clusters: Vec<ClusterName>,
    /// The image its next node gets (None: the driver's), with the shared
    /// config version it comes from; or why it has none.
    pub image: Result<Option<flotilla_engine::ResolvedImage>, String>,
}

/// One version of a pool written through the API.
pub type PoolVersion = PoolRecord;

/// What applying a pool would do (a dry run) or did.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolApplied {
    /// `created`, `changed`, `unchanged`.
    pub outcome: ApplyOutcome,
    /// The top-level fields whose values differ from the version before.
    pub changed_fields: Vec<String>,
    /// The pool as it is (or, for a dry run, would be).
    pub pool: PoolDetail,
    /// The version of its launch configuration its nodes are made at from
    /// now on (or why its image cannot be resolved).
    pub launch_version: Result<flotilla_domain::LaunchVersion, String>,
    /// The clusters with nodes its rollout replaces (made from another
    /// version), those the caller may see.
    pub replaces: Vec<crate::ClusterReplacement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    Created,
    Changed,
    Unchanged,
}

impl ApplyOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyOutcome::Created => "created",
            ApplyOutcome::Changed => "changed",
            ApplyOutcome::Unchanged => "unchanged",
        }
    }
}

/// Creates or changes a pool written through the API: checked against its
/// driver's schema and by its driver, by an admin or one of its owners.
/// Writing what it already is changes nothing.
#[derive(Debug, Clone)]
pub struct ApplyPool {
    pub pool: String,
    /// The pool as written (JSON; TOML is turned into JSON by the client).
    pub document: serde_json::Value,
    /// The version the writer last saw (0: none, it creates the pool), if
    /// it says: refused if the pool has moved on since, so an edit made
    /// from an old copy cannot undo someone else's.
    pub expected_version: Option<u64>,
}

/// Retires a pool written through the API: refused while a cluster's
/// record or an organisation's settings name it.
#[derive(Debug, Clone)]
pub struct RetirePool {
    pub pool: String,
}

/// What an apply found before it writes.
pub struct Prepared {
    name: PoolName,
    /// The latest version (retired or not), if the pool was ever written.
    latest: Option<PoolRecord>,
    document: PoolDocument,
    spec: PoolSpec,
    outcome: ApplyOutcome,
    changed_fields: Vec<String>,
}

impl Control {
    /// The catalogue of what pools may say, driver by driver.
    pub fn catalog(&self) -> &PoolCatalog {
        &self.catalog
    }

    /// A name for a pool written through the API: refused if the config
    /// file defines it.
    fn writable_pool(&self, pool: &str) -> Result<PoolName, EngineError> {
        let name = PoolName::new(pool)?;
        if self
            .engine
            .pool(&name)
            .is_some_and(|p| p.source == PoolSource::Config)
        {
            return Err(EngineError::PoolInConfig(name));
        }
        Ok(name)
    }

    /// The latest version of a stored pool, if it was ever written.
    async fn latest_pool(&self, name: &PoolName) -> Result<Option<PoolRecord>, EngineError> {
        Ok(self.engine.store().pool_history(name).await?.pop())
    }

    /// Refused unless the caller may change a pool whose current version
    /// is `latest` (admins; and its owners, while it is not retired).
    fn authorize_pool(
        &self,
        caller: &Caller,
        name: &PoolName,
        latest: Option<&PoolRecord>,
    ) -> Result<(), EngineError> {
        let owners: Vec<PoolOwner> = latest
            .and_then(|r| r.document.clone())
            .and_then(|d| serde_json::from_value::<PoolDocument>(d).ok())
            .and_then(|d| d.spec(PoolSource::Config).ok())
            .map(|s| s.owners)
            .unwrap_or_default();
        let orgs = self.engine.orgs();
        authorize_pool_write(caller, name, &owners, |org, user| {
            orgs.iter()
                .find(|o| &o.name == org)
                .and_then(|o| o.role(user))
        })?;
        Ok(())
    }

    async fn prepare_apply(
        &self,
        caller: &Caller,
        command: &ApplyPool,
    ) -> Result<Prepared, EngineError> {
        let name = self.writable_pool(&command.pool)?;
        let latest = self.latest_pool(&name).await?;
        self.authorize_pool(caller, &name, latest.as_ref())?;
        let found = latest.as_ref().map_or(0, |r| r.version);
        if let Some(expected) = command.expected_version.filter(|e| *e != found) {
            return Err(EngineError::Conflict(StoreError::Stale {
                what: format!("pool {name}"),
                expected,
                found,
            }));
        }
        let next = found + 1;
        let (document, spec) = self
            .catalog
            .check(
                &name,
                &command.document,
                PoolSource::Stored { version: next },
            )
            .map_err(|problems| EngineError::InvalidPool {
                pool: name.to_string(),
                problems,
            })?;
        self.check_image_reference(&name, &spec).await?;
        let before: Option<PoolDocument> = latest
            .as_ref()
            .and_then(|r| r.document.clone())
            .and_then(|d| serde_json::from_value(d).ok());
        let (outcome, changed_fields) = match &before {
            None => (ApplyOutcome::Created, Vec::new()),
            Some(b) if *b == document => (ApplyOutcome::Unchanged, Vec::new()),
            Some(b) => (ApplyOutcome::Changed, changed_fields(b, &document)),
        };
        authorize_pool_fields(caller, &name, &changed_fields)?;
        Ok(Prepared {
            name,
            latest,
            document,
            spec,
            outcome,
            changed_fields,
        })
    }

    /// Refused unless the shared config a pool's image names exists, holds
    /// images for the pool's type of driver, and gives one (under its key).
    async fn check_image_reference(
        &self,
        pool: &PoolName,
        spec: &PoolSpec,
    ) -> Result<(), EngineError> {
        let Some((shared, key)) = spec.image.as_ref().and_then(|i| i.shared()) else {
            return Ok(());
        };
        let problem = |pointer: &str, message: String| EngineError::PoolImageUnresolved {
            pool: pool.to_string(),
            problems: vec![Problem::new(pointer, message)],
        };
        // The schema checked the name's shape.
        let name =
            SharedConfigName::new(shared).map_err(|e| problem("/image/shared", e.to_string()))?;
        let Some(record) = self
            .engine
            .store()
            .shared_config_versions(&name)
            .await?
            .pop()
        else {
            return Err(problem(
                "/image/shared",
                format!("no shared config {name}; create it first (flotilla shared-config create)"),
            ));
        };
        let pool_type = self.catalog.kind_of(&spec.driver);
        let holds_images = record.kind.split_once('/').is_some_and(|(driver, kind)| {
            kind == "images" && self.catalog.kind_of(driver) == pool_type
        });
        if !holds_images {
            return Err(problem(
                "/image/shared",
                format!(
                    "shared config {name} follows {}; a pool on driver {} takes its image from images of a driver of type {}",
                    record.kind,
                    spec.driver,
                    pool_type.unwrap_or("?")
                ),
            ));
        }
        image_from(&record.value, key).map_err(|e| {
            problem(
                "/image",
                format!("shared config {name} (version {}): {e}", record.version),
            )
        })?;
        Ok(())
    }

    /// What applying `command` would do, changing nothing: the same checks
    /// and answer as applying it.
    pub async fn dry_run_pool(
        &self,
        caller: &Caller,
        command: &ApplyPool,
    ) -> Result<PoolApplied, EngineError> {
        let p = self.prepare_apply(caller, command).await?;
        let clusters = self.clusters_of_pool(&p.name);
        let (launch_version, mut replaces) = self.outdated_by(caller, &p.name, &p.spec);
        replaces.retain(|c| !c.outdated.is_empty());
        Ok(PoolApplied {
            launch_version,
            replaces,
            outcome: p.outcome,
            changed_fields: p.changed_fields,
            pool: PoolDetail {
                is_default: *self.engine.default_pool() == p.name,
                source: p.spec.source,
                image: self.engine.resolve_image(&p.spec),
                updated: None,
                document: p.document,
                name: p.name,
                clusters,
            },
        })
    }

    fn clusters_of_pool(&self, pool: &PoolName) -> Vec<ClusterName> {
        let engine = &self.engine;
        engine
            .cluster_names()
            .into_iter()
            .filter(|c| engine.record(c).is_some_and(|r| &r.pool == pool))
            .collect()
    }

    /// Pool `pool` as it is now.
    pub async fn pool_detail(&self, pool: &str) -> Result<PoolDetail, EngineError> {
        let name = self.known_pool(pool)?;
        let spec = self
            .engine
            .pool(&name)
            .ok_or_else(|| self.unknown_pool(pool))?;
        let written = match spec.source {
            PoolSource::Config => None,
            PoolSource::Stored { version } => self
                .engine
                .store()
                .pool_history(&name)
                .await?
                .into_iter()
                .find(|r| r.version == version),
        };
        // As written, so that what `pool show` gives back applies as it is
        // (a document rebuilt from its meaning names every type's price).
        let document = written
            .as_ref()
            .and_then(|r| r.document.clone())
            .and_then(|d| serde_json::from_value(d).ok())
            .unwrap_or_else(|| spec.document());
        let updated = written.map(|r| (r.at, r.by));
        Ok(PoolDetail {
            is_default: *self.engine.default_pool() == name,
            image: self.engine.resolve_image(&spec),
            source: spec.source,
            document,
            updated,
            clusters: self.clusters_of_pool(&name),
            name,
        })
    }

    /// Pool `pool` as `caller` may see it: in full for admins and its
    /// owners; for others without what its nodes run (`init_data`) and its
    /// driver's section (instance roles, keys), which may hold secrets.
    pub async fn pool_detail_as(
        &self,
        caller: &Caller,
        pool: &str,
    ) -> Result<(PoolDetail, Vec<&'static str>), EngineError> {
        let mut detail = self.pool_detail(pool).await?;
        let owners: Vec<PoolOwner> = detail
            .document
            .owners
            .iter()
            .filter_map(|o| PoolOwner::parse(o).ok())
            .collect();
        let orgs = self.engine.orgs();
        let full = authorize_pool_write(caller, &detail.name, &owners, |org, user| {
            orgs.iter()
                .find(|o| &o.name == org)
                .and_then(|o| o.role(user))
        })
        .is_ok();
        let mut hidden = Vec::new();
        if !full {
            if detail.document.init_data.take().is_some() {
                hidden.push("init_data");
            }
            if detail.document.ec2.take().is_some() {
                hidden.push("ec2");
            }
        }
        Ok((detail, hidden))
    }

    /// Every version of pool `pool` written through the API, oldest
    /// first; none for a pool of the config file.
    pub async fn pool_history(&self, pool: &str) -> Result<Vec<PoolVersion>, EngineError> {
        let name = PoolName::new(pool)?;
        let history = self.engine.store().pool_history(&name).await?;
        if history.is_empty() && self.engine.pool(&name).is_none() {
            return Err(self.unknown_pool(pool));
        }
        Ok(history)
    }
}

/// The top-level fields whose values differ between two documents.
fn changed_fields(before: &PoolDocument, after: &PoolDocument) -> Vec<String> {
    let (Ok(serde_json::Value::Object(b)), Ok(serde_json::Value::Object(a))) =
        (serde_json::to_value(before), serde_json::to_value(after))
    else {
        return Vec::new();
    };
    let keys: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    keys.into_iter()
        .filter(|k| b.get(*k) != a.get(*k))
        .map(|k| k.to_string())
        .collect()
}

impl sealed::Sealed for ApplyPool {}

impl Command for ApplyPool {
    /// What was checked, and the version the pool is at.
    type Committed = (Prepared, PoolRecord, Caller);
    type View = PoolApplied;
    const NAME: &'static str = "apply_pool";

    async fn commit(
        self,
        control: &Control,
        caller: &Caller,
    ) -> Result<Self::Committed, EngineError> {
        let p = control.prepare_apply(caller, &self).await?;
        let record = match (&p.latest, p.outcome) {
            (Some(latest), ApplyOutcome::Unchanged) => latest.clone(),
            _ => {
                let document = serde_json::to_value(&p.document)
                    .map_err(|e| EngineError::Config(format!("pool {}: {e}", p.name)))?;
                let by = Control::writer(caller);
                let now = control.engine.now();
                control
                    .engine
                    .store()
                    .write_pool(
                        &PoolWrite {
                            name: p.name.clone(),
                            expected: p.latest.as_ref().map_or(0, |r| r.version),
                            document: Some(document),
                            schema_version: POOL_SCHEMA_VERSION,
                            by,
                        },
                        now,
                    )
                    .await?
            }
        };
        Ok((p, record, caller.clone()))
    }

    /// Answered from what was written, not from this server's copy, which
    /// a failed read of the feed may leave behind.
    async fn answer(
        (p, record, caller): Self::Committed,
        control: &Control,
    ) -> Result<PoolApplied, EngineError> {
        let mut spec = p.spec;
        spec.source = PoolSource::Stored {
            version: record.version,
        };
        let (launch_version, mut replaces) = control.outdated_by(&caller, &p.name, &spec);
        replaces.retain(|c| !c.outdated.is_empty());
        Ok(PoolApplied {
            launch_version,
            replaces,
            outcome: p.outcome,
            changed_fields: p.changed_fields,
            pool: PoolDetail {
                is_default: *control.engine.default_pool() == p.name,
                source: spec.source,
                image: control.engine.resolve_image(&spec),
                updated: Some((record.at, record.by)),
                clusters: control.clusters_of_pool(&p.name),
                document: p.document,
                name: p.name,
            },
        })
    }
}

impl sealed::Sealed for RetirePool {}

impl Command for RetirePool {
    type Committed = PoolRecord;
    type View = PoolRecord;
    const NAME: &'static str = "retire_pool";

    async fn commit(self, control: &Control, caller: &Caller) -> Result<PoolRecord, EngineError> {
        let name = control.writable_pool(&self.pool)?;
        let latest = control.latest_pool(&name).await?;
        let Some(latest) = latest.filter(|r| r.document.is_some()) else {
            return Err(control.unknown_pool(&self.pool));
        };
        control.authorize_pool(caller, &name, Some(&latest))?;
        let orgs: Vec<String> = control
            .engine
            .orgs()
            .into_iter()
            .filter(|o| o.settings.pool == name)
            .map(|o| o.name.to_string())
            .collect();
        if !orgs.is_empty() {
            return Err(EngineError::Conflict(StoreError::InUse {
                what: format!("pool {name}"),
                users: format!(
                    "the settings of organisations {}; set their pool to another first",
                    orgs.join(", ")
                ),
            }));
        }
        let by = Control::writer(caller);
        let now = control.engine.now();
        Ok(control
            .engine
            .store()
            .write_pool(
                &PoolWrite {
                    name,
                    expected: latest.version,
                    document: None,
                    schema_version: POOL_SCHEMA_VERSION,
                    by,
                },
                now,
            )
            .await?)
    }

    async fn answer(committed: PoolRecord, _: &Control) -> Result<PoolRecord, EngineError> {
        Ok(committed)
    }
}
