//! Shared configs: a value many pools use (the image per region, say),
//! written by admins against a schema its driver publishes, which is fixed
//! once the config is created; every version kept, none deleted.

use flotilla_domain::{authorize_admin, Caller, PoolName, Problem, SharedConfigName};
use flotilla_engine::EngineError;
use flotilla_store::{SharedConfigRecord, SharedConfigWrite};

use crate::{sealed, Command, Control, PoolCatalog};

/// Creates a shared config (with `kind`, the published schema it follows:
/// `DRIVER/KIND`), or writes its next version (`kind`, if given, must be
/// its own). The value must follow the schema.
#[derive(Debug, Clone)]
pub struct WriteSharedConfig {
    pub name: String,
    pub kind: Option<String>,
    pub value: serde_json::Value,
    /// The version the writer last saw (0: none), if it says: refused if
    /// the config has moved on since.
    pub expected_version: Option<u64>,
}

/// A shared config as shown: the version asked for, and the pools that
/// name it.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedConfigView {
    pub record: SharedConfigRecord,
    /// The latest version (the one pools resolve to).
    pub latest: u64,
    pub used_by: Vec<PoolName>,
}

impl Control {
    /// The pools (config file's and stored) whose image names config `name`.
    fn pools_using(&self, name: &SharedConfigName) -> Vec<PoolName> {
        self.engine
            .pools()
            .into_iter()
            .filter(|p| {
                self.engine.pool(p).is_some_and(|spec| {
                    spec.image
                        .as_ref()
                        .and_then(|i| i.shared())
                        .is_some_and(|(s, _)| s == name.as_str())
                })
            })
            .collect()
    }

    /// Shared config `name` at `version` (the latest if None).
    pub async fn shared_config(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<SharedConfigView, EngineError> {
        let name = SharedConfigName::new(name)?;
        let versions = self.engine.store().shared_config_versions(&name).await?;
        let latest = versions.last().map_or(0, |r| r.version);
        let record = match version {
            None => versions.last().cloned(),
            Some(v) => versions.into_iter().find(|r| r.version == v),
        }
        .ok_or_else(|| EngineError::UnknownSharedConfig {
            name: name.to_string(),
            version,
            latest: (latest > 0).then_some(latest),
        })?;
        Ok(SharedConfigView {
            used_by: self.pools_using(&name),
            record,
            latest,
        })
    }

    /// Every shared config, at its latest version.
    pub async fn shared_configs(&self) -> Result<Vec<SharedConfigView>, EngineError> {
        let latest = self.engine.store().shared_configs().await?;
        Ok(latest
            .into_iter()
            .map(|record| SharedConfigView {
                used_by: self.pools_using(&record.name),
                latest: record.version,
                record,
            })
            .collect())
    }
}

impl sealed::Sealed for WriteSharedConfig {}

impl Command for WriteSharedConfig {
    type Committed = SharedConfigName;
    type View = SharedConfigView;
    const NAME: &'static str = "write_shared_config";

    async fn commit(
        self,
        control: &Control,
        caller: &Caller,
    ) -> Result<SharedConfigName, EngineError> {
        authorize_admin(caller)?;
        let name = SharedConfigName::new(self.name.as_str())?;
        let versions = control.engine.store().shared_config_versions(&name).await?;
        let found = versions.last().map_or(0, |r| r.version);
        if let Some(expected) = self.expected_version.filter(|e| *e != found) {
            return Err(EngineError::Conflict(flotilla_store::StoreError::Stale {
                what: format!("shared config {name}"),
                expected,
                found,
            }));
        }
        let invalid = |problems: Vec<Problem>| EngineError::InvalidSharedConfig {
            name: name.to_string(),
            problems,
        };
        let (kind, schema) = match (versions.first(), self.kind) {
            (Some(first), None) => (first.kind.clone(), first.schema.clone()),
            (Some(first), Some(kind)) if kind == first.kind => {
                (first.kind.clone(), first.schema.clone())
            }
            (Some(first), Some(kind)) => {
                return Err(EngineError::SharedConfigSchemaFixed {
                    name: name.to_string(),
                    kind: first.kind.clone(),
                    asked: kind,
                })
            }
            (None, None) => {
                return Err(EngineError::UnknownSharedConfig {
                    name: name.to_string(),
                    version: None,
                    latest: None,
                })
            }
            (None, Some(kind)) => {
                let schema = kind
                    .split_once('/')
                    .and_then(|(driver, k)| control.catalog.shared_schema(driver, k))
                    .cloned()
                    .ok_or_else(|| {
                        let known: Vec<String> = control
                            .catalog
                            .drivers()
                            .flat_map(|(d, _)| {
                                control
                                    .catalog
                                    .shared_kinds(d)
                                    .into_iter()
                                    .map(move |k| format!("{d}/{k}"))
                            })
                            .collect();
                        invalid(vec![Problem::at(
                            "schema",
                            format!(
                                "no published schema {kind:?}; published: {}",
                                known.join(", ")
                            ),
                        )])
                    })?;
                (kind, schema)
            }
        };
        let problems = PoolCatalog::check_shared(&schema, &self.value)
            .into_iter()
            .map(|p| Problem::new(format!("/value{}", p.pointer), p.message))
            .collect::<Vec<_>>();
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        let by = Control::writer(caller);
        let now = control.engine.now();
        control
            .engine
            .store()
            .write_shared_config(
                &SharedConfigWrite {
                    name: name.clone(),
                    expected: versions.last().map_or(0, |r| r.version),
                    kind,
                    schema,
                    value: self.value,
                    by,
                },
                now,
            )
            .await?;
        Ok(name)
    }

    async fn answer(
        name: SharedConfigName,
        control: &Control,
    ) -> Result<SharedConfigView, EngineError> {
        control.shared_config(name.as_str(), None).await
    }
}
