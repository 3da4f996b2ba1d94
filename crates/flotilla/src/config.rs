//! The server's configuration: TOML, unknown keys refused, durations as
//! human strings. Values go through the same constructors the API uses, so
//! a config cannot hold what a request could not.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_cloud::fake::FakeConfig;
use flotilla_cloud::Tags;
use flotilla_domain::{InstanceType, Limits, PoolName, Timeouts};
use flotilla_engine::{EngineConfig, PoolSpec};
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";
pub const DEFAULT_DATA_DIR: &str = "flotilla-data";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    default_pool: Option<String>,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    engine: EngineSection,
    #[serde(default)]
    drivers: BTreeMap<String, DriverConfig>,
    #[serde(default)]
    pools: BTreeMap<String, PoolSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LimitsSection {
    #[serde(with = "humantime_serde")]
    min_ttl: Duration,
    #[serde(with = "humantime_serde")]
    max_ttl: Duration,
    #[serde(with = "humantime_serde")]
    max_wait: Duration,
    #[serde(with = "humantime_serde")]
    resync_interval: Duration,
    max_nodes: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let limits = Limits::default();
        let engine = EngineConfig::default();
        Self {
            min_ttl: limits.min_ttl,
            max_ttl: limits.max_ttl,
            max_wait: engine.max_wait,
            resync_interval: engine.resync_interval,
            max_nodes: limits.max_nodes,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct EngineSection {
    #[serde(with = "humantime_serde")]
    boot_timeout: Duration,
    #[serde(with = "humantime_serde")]
    probe_timeout: Duration,
    #[serde(with = "humantime_serde")]
    probe_interval: Duration,
    #[serde(with = "humantime_serde")]
    destroy_retry: Duration,
    #[serde(with = "humantime_serde")]
    capacity_backoff: Duration,
    concurrency: usize,
}

impl Default for EngineSection {
    fn default() -> Self {
        let t = Timeouts::default();
        let e = EngineConfig::default();
        Self {
            boot_timeout: t.boot,
            probe_timeout: t.probe,
            probe_interval: e.probe_interval,
            destroy_retry: t.destroy_retry,
            capacity_backoff: e.capacity_backoff,
            concurrency: e.concurrency,
        }
    }
}

/// One driver (instance set). `type` picks the cloud.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DriverConfig {
    Local {
        /// Where node state lives; default `DATA_DIR/drivers/NAME`.
        dir: Option<PathBuf>,
        /// SIGTERM to SIGKILL.
        #[serde(default = "default_grace", with = "humantime_serde")]
        grace: Duration,
        #[serde(default = "default_max_batch")]
        max_batch: u32,
        /// Budget of driver operations per second (none: unlimited).
        ops_per_second: Option<f64>,
    },
    Fake {
        #[serde(default)]
        faults: FakeConfig,
        ops_per_second: Option<f64>,
    },
}

fn default_grace() -> Duration {
    Duration::from_secs(5)
}

fn default_max_batch() -> u32 {
    50
}

impl DriverConfig {
    pub fn ops_per_second(&self) -> Option<f64> {
        match self {
            DriverConfig::Local { ops_per_second, .. }
            | DriverConfig::Fake { ops_per_second, .. } => *ops_per_second,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolSection {
    driver: String,
    instance_type: String,
    image: Option<String>,
    /// Handed to each node at boot: on `local`, a shell command the node
    /// agent runs as its workload.
    init_data: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub engine: EngineConfig,
    pub drivers: BTreeMap<String, DriverConfig>,
    pub pools: BTreeMap<PoolName, PoolSpec>,
    pub default_pool: PoolName,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Reads `path`, or the embedded defaults when there is none.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Self::parse("", "(embedded defaults)"),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                Self::parse(&text, &p.display().to_string())
            }
        }
    }

    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        };
        let file: File =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_owned()))?;

        let l = &file.limits;
        if l.min_ttl > l.max_ttl {
            return Err(invalid(format!(
                "limits.min_ttl ({}) is above limits.max_ttl ({})",
                humantime::format_duration(l.min_ttl),
                humantime::format_duration(l.max_ttl)
            )));
        }
        if l.max_nodes == 0 {
            return Err(invalid("limits.max_nodes must be at least 1".into()));
        }
        if l.resync_interval.is_zero() {
            return Err(invalid("limits.resync_interval must be above zero".into()));
        }
        let e = &file.engine;
        if e.concurrency == 0 {
            return Err(invalid("engine.concurrency must be at least 1".into()));
        }
        if e.probe_interval.is_zero() {
            return Err(invalid("engine.probe_interval must be above zero".into()));
        }

        let mut drivers = file.drivers;
        if drivers.is_empty() {
            drivers.insert(
                "local".into(),
                DriverConfig::Local {
                    dir: None,
                    grace: default_grace(),
                    max_batch: default_max_batch(),
                    ops_per_second: None,
                },
            );
        }
        for (name, driver) in &drivers {
            if flotilla_domain::PoolName::new(name.as_str()).is_err() {
                return Err(invalid(format!(
                    "drivers.{name}: driver names use letters, digits, '-' and '_'"
                )));
            }
            if let Some(r) = driver.ops_per_second() {
                if !(r > 0.0 && r.is_finite()) {
                    return Err(invalid(format!(
                        "drivers.{name}.ops_per_second must be above zero"
                    )));
                }
            }
            if let DriverConfig::Local { max_batch: 0, .. } = driver {
                return Err(invalid(format!(
                    "drivers.{name}.max_batch must be at least 1"
                )));
            }
        }

        let mut pool_sections = file.pools;
        if pool_sections.is_empty() {
            let driver = drivers.keys().next().expect("at least one driver").clone();
            pool_sections.insert(
                "default".into(),
                PoolSection {
                    driver,
                    instance_type: "local.small".into(),
                    image: None,
                    init_data: None,
                    tags: BTreeMap::new(),
                },
            );
        }
        let mut pools = BTreeMap::new();
        for (name, p) in pool_sections {
            let pool_name =
                PoolName::new(name.as_str()).map_err(|e| invalid(format!("pools.{name}: {e}")))?;
            if !drivers.contains_key(&p.driver) {
                return Err(invalid(format!(
                    "pools.{name}.driver: no driver named {:?} (configured: {})",
                    p.driver,
                    drivers.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            let instance_type = InstanceType::new(p.instance_type.as_str())
                .map_err(|e| invalid(format!("pools.{name}.instance_type: {e}")))?;
            for key in p.tags.keys() {
                if key.starts_with("flotilla-") {
                    return Err(invalid(format!(
                        "pools.{name}.tags.{key}: tags starting with flotilla- are reserved for ownership"
                    )));
                }
            }
            pools.insert(
                pool_name,
                PoolSpec {
                    driver: p.driver,
                    instance_type,
                    image: p.image,
                    init_data: p.init_data,
                    tags: p.tags.into_iter().collect::<Tags>(),
                },
            );
        }
        let default_pool = match file.default_pool {
            Some(name) => PoolName::new(name.as_str())
                .ok()
                .filter(|p| pools.contains_key(p))
                .ok_or_else(|| invalid(format!("default_pool: no pool named {name:?}")))?,
            None => {
                let default = PoolName::new("default").expect("valid");
                if pools.contains_key(&default) {
                    default
                } else if pools.len() == 1 {
                    pools.keys().next().expect("one pool").clone()
                } else {
                    return Err(invalid(
                        "default_pool: several pools and none named \"default\"; set default_pool"
                            .into(),
                    ));
                }
            }
        };

        Ok(Config {
            listen: file
                .listen
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid")),
            data_dir: file
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            engine: EngineConfig {
                limits: Limits {
                    min_ttl: l.min_ttl,
                    max_ttl: l.max_ttl,
                    max_nodes: l.max_nodes,
                },
                timeouts: Timeouts {
                    boot: e.boot_timeout,
                    probe: e.probe_timeout,
                    destroy_retry: e.destroy_retry,
                },
                resync_interval: l.resync_interval,
                probe_interval: e.probe_interval,
                max_wait: l.max_wait,
                concurrency: e.concurrency,
                capacity_backoff: e.capacity_backoff,
                ..EngineConfig::default()
            },
            drivers,
            pools,
            default_pool,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, "test.toml").unwrap_err().to_string()
    }

    #[test]
    fn embedded_defaults() {
        let c = Config::parse("", "x").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(matches!(c.drivers["local"], DriverConfig::Local { .. }));
        assert_eq!(c.default_pool.as_str(), "default");
        assert_eq!(
            c.pools[&c.default_pool].instance_type.as_str(),
            "local.small"
        );
        assert_eq!(c.engine.resync_interval, Duration::from_secs(10));
        assert_eq!(c.engine.timeouts.boot, Duration::from_secs(600));
    }

    #[test]
    fn product_example_parses_except_for_drivers_not_built() {
        let text = r#"
listen = "127.0.0.1:9000"
data_dir = "state"

[limits]
min_ttl = "1m"
max_wait = "10m"
resync_interval = "10s"

[drivers.local]
type = "local"

[pools.default]
driver = "local"
instance_type = "local.small"
"#;
        let c = Config::parse(text, "x").unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.engine.max_wait, Duration::from_secs(600));
    }

    /// The README's config example is what an operator copies: it must parse
    /// and mean what its comments say.
    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n").expect("a toml block in README") + "```toml\n".len();
        let text = &readme[start..start + readme[start..].find("```").expect("closed block")];
        let c = Config::parse(text, "README.md").unwrap();
        let defaults = Config::parse("", "x").unwrap();
        assert_eq!(
            c.engine.limits, defaults.engine.limits,
            "README shows the default limits"
        );
        assert_eq!(
            c.engine.timeouts, defaults.engine.timeouts,
            "README shows the default timeouts"
        );
        assert_eq!(c.engine.concurrency, defaults.engine.concurrency);
        assert!(matches!(c.drivers["sim"], DriverConfig::Fake { .. }));
        assert_eq!(
            c.pools[&c.default_pool]
                .tags
                .get("team")
                .map(String::as_str),
            Some("data")
        );
    }

    #[test]
    fn unknown_keys_name_the_key_and_file() {
        let e = err("[limits]\nmax_wiat = \"1m\"\n");
        assert!(e.contains("test.toml") && e.contains("max_wiat"), "{e}");
        let e = err("[drivers.x]\ntype = \"local\"\nbogus = 1\n");
        assert!(e.contains("bogus"), "{e}");
        let e = err("lisen = \"127.0.0.1:1\"\n");
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        assert!(err("[limits]\nmin_ttl = \"soon\"\n").contains("min_ttl"));
        assert!(err("[limits]\nmin_ttl = \"2h\"\nmax_ttl = \"1h\"\n").contains("limits.min_ttl"));
        assert!(err("[drivers.x]\ntype = \"nimbus\"\n").contains("nimbus"));
        let e = err("[drivers.x]\ntype = \"local\"\n[pools.default]\ndriver = \"y\"\ninstance_type = \"a\"\n");
        assert!(
            e.contains("pools.default.driver") && e.contains("\"y\""),
            "{e}"
        );
        let e = err("[pools.default]\ndriver = \"local\"\ninstance_type = \"a b\"\n[drivers.local]\ntype = \"local\"\n");
        assert!(e.contains("pools.default.instance_type"), "{e}");
        let e = err("[drivers.local]\ntype = \"local\"\n[pools.a]\ndriver = \"local\"\ninstance_type = \"x\"\n[pools.b]\ndriver = \"local\"\ninstance_type = \"x\"\n");
        assert!(e.contains("default_pool"), "{e}");
        let e = err("[drivers.local]\ntype = \"local\"\nops_per_second = 0\n");
        assert!(e.contains("ops_per_second"), "{e}");
    }

    #[test]
    fn fake_driver_takes_fault_knobs() {
        let c = Config::parse(
            "[drivers.sim]\ntype = \"fake\"\n[drivers.sim.faults]\nboot_delay = \"2s\"\nquota = 10\n[pools.default]\ndriver = \"sim\"\ninstance_type = \"fake.small\"\n",
            "x",
        )
        .unwrap();
        match &c.drivers["sim"] {
            DriverConfig::Fake { faults, .. } => {
                assert_eq!(faults.boot_delay, Duration::from_secs(2));
                assert_eq!(faults.quota, Some(10));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err("[drivers.sim]\ntype = \"fake\"\n[drivers.sim.faults]\nboot_dealy = \"2s\"\n")
                .contains("boot_dealy")
        );
    }
}
