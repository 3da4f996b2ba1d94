//! The driver's configuration, as written under `[drivers.NAME]` with
//! `type = "ec2"`. Credentials are never part of it: they come from the
//! standard AWS chain (environment, profile, web identity, container or
//! instance role).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use flotilla_domain::{PoolName, PoolSpec, Problem};
use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::Ec2Error;

/// Configuration of one EC2 instance set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2Config {
    /// The AWS region, e.g. `us-west-2`.
    pub region: String,
    /// Another endpoint than AWS's own for the region (an EC2-compatible
    /// service, or a VPC endpoint), e.g. `http://127.0.0.1:5055`.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// The AMI used when a create request names none.
    #[serde(default)]
    pub image: Option<String>,
    /// Subnets to launch into, tried in order: a subnet that is full, gone,
    /// or out of capacity in its availability zone fails over to the next.
    /// Empty: the account's default VPC chooses.
    #[serde(default)]
    pub subnets: Vec<String>,
    /// Security group IDs (`sg-…`) for every instance.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// The EC2 key pair name, for SSH access to the nodes.
    #[serde(default)]
    pub key_name: Option<String>,
    /// The IAM instance profile of the nodes, by name or ARN.
    #[serde(default)]
    pub iam_instance_profile: Option<String>,
    /// The most instances one RunInstances call asks for.
    #[serde(default = "default_max_batch")]
    pub max_batch: u32,
    /// Launch spot instances instead of on-demand ones.
    #[serde(default)]
    pub spot: Option<SpotConfig>,
    /// A node is ready only once it answers this HTTP check; without one, a
    /// node is ready as soon as EC2 says it runs.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Which of an instance's IP addresses is its address.
    #[serde(default)]
    pub address: AddressKind,
    /// How long a capacity shortage of an instance type (spot and on-demand
    /// separately) is remembered, so creates go straight to what works.
    #[serde(default = "default_capacity_memory", with = "humantime_serde")]
    pub capacity_memory: Duration,
    /// How long spot prices are cached.
    #[serde(default = "default_price_cache", with = "humantime_serde")]
    pub price_cache: Duration,
    /// Reservations per DescribeInstances page (EC2 allows 5 to 1000).
    #[serde(default = "default_list_page_size")]
    pub list_page_size: u32,
    /// Limit on one EC2 API call, including connecting.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The launch settings of the pools that override the driver's: each
    /// pool's `[pools.NAME.ec2]`, filled in by whoever reads the pools (never
    /// from the driver's own table).
    #[serde(skip)]
    pub pools: BTreeMap<PoolName, Ec2PoolOptions>,
}

/// `[pools.NAME.ec2]`: what one pool launches differently from its driver.
/// A key present replaces the driver's setting of the same name; `spot =
/// false` and `health_check = false` switch the driver's off for the pool.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "EC2 launch settings of a pool",
    description = "What one pool launches differently from its ec2 driver: a key present replaces the driver's setting of the same name."
)]
pub struct Ec2PoolOptions {
    /// Subnets to launch into, tried in order (`subnet-…`).
    #[serde(default)]
    pub subnets: Option<Vec<String>>,
    /// Security group IDs (`sg-…`) for every instance.
    #[serde(default)]
    pub security_groups: Option<Vec<String>>,
    /// The EC2 key pair name, for ssh logins to the nodes.
    #[serde(default)]
    pub key_name: Option<String>,
    /// The IAM instance profile (name or ARN) the nodes run as.
    #[serde(default)]
    pub iam_instance_profile: Option<String>,
    /// Spot instances (a table), or `false` for on-demand whatever the
    /// driver says.
    #[serde(default, deserialize_with = "off_or")]
    #[schemars(schema_with = "off_or_schema::<SpotConfig>")]
    pub spot: Option<Option<SpotConfig>>,
    /// The HTTP check a node must pass to be ready (a table), or `false`
    /// for ready once running whatever the driver says.
    #[serde(default, deserialize_with = "off_or")]
    #[schemars(schema_with = "off_or_schema::<HealthCheck>")]
    pub health_check: Option<Option<HealthCheck>>,
}

/// How one pool's instances are launched and checked: the driver's
/// settings with the pool's [`Ec2PoolOptions`] over them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchSettings<'a> {
    pub subnets: &'a [String],
    pub security_groups: &'a [String],
    pub key_name: Option<&'a str>,
    pub iam_instance_profile: Option<&'a str>,
    pub spot: Option<&'a SpotConfig>,
    pub health_check: Option<&'a HealthCheck>,
}

impl LaunchSettings<'_> {
    /// The checks the driver's table and a pool's share.
    fn check(&self) -> Result<(), String> {
        for (what, values) in [
            ("subnets", self.subnets),
            ("security_groups", self.security_groups),
        ] {
            if values.iter().any(|v| v.trim().is_empty()) {
                return Err(format!("{what} holds an empty entry"));
            }
        }
        for (what, value) in [
            ("key_name", self.key_name),
            ("iam_instance_profile", self.iam_instance_profile),
        ] {
            if value.is_some_and(|v| v.trim().is_empty()) {
                return Err(format!("{what} is empty; leave it out instead"));
            }
        }
        if let Some(price) = self.spot.and_then(|s| s.max_price.as_ref()) {
            if !price.parse::<f64>().is_ok_and(|p| p.is_finite() && p > 0.0) {
                return Err(format!(
                    "spot.max_price {price:?} is not a positive price in USD such as \"0.05\""
                ));
            }
        }
        if let Some(check) = self.health_check {
            if check.port == 0 {
                return Err("health_check.port is 0".to_owned());
            }
            if !check.path.starts_with('/') || check.path.chars().any(char::is_whitespace) {
                return Err(format!(
                    "health_check.path {:?} must start with '/' and hold no spaces",
                    check.path
                ));
            }
        }
        Ok(())
    }
}

impl Ec2PoolOptions {
    /// The JSON Schema of a pool's `ec2` section, generated from this type.
    pub fn schema() -> serde_json::Value {
        let mut schema = flotilla_domain::schema_of::<Ec2PoolOptions>();
        if let Some(object) = schema.as_object_mut() {
            // It is set into a pool's schema, whose root names the draft.
            object.remove("$schema");
        }
        schema
    }

    /// A pool's `ec2` section as written.
    pub fn from_value(value: &serde_json::Value) -> Result<Self, String> {
        Self::deserialize(value).map_err(|e| e.to_string())
    }

    /// Refuses what EC2 would refuse on every launch of the pool.
    pub fn validate(&self) -> Result<(), Ec2Error> {
        self.over(&LaunchSettings {
            subnets: &[],
            security_groups: &[],
            key_name: None,
            iam_instance_profile: None,
            spot: None,
            health_check: None,
        })
        .check()
        .map_err(|reason| Ec2Error::InvalidPoolOptions { reason })
    }

    /// These options over `base`.
    fn over<'a>(&'a self, base: &LaunchSettings<'a>) -> LaunchSettings<'a> {
        LaunchSettings {
            subnets: self.subnets.as_deref().unwrap_or(base.subnets),
            security_groups: self
                .security_groups
                .as_deref()
                .unwrap_or(base.security_groups),
            key_name: self.key_name.as_deref().or(base.key_name),
            iam_instance_profile: self
                .iam_instance_profile
                .as_deref()
                .or(base.iam_instance_profile),
            spot: self.spot.as_ref().map_or(base.spot, Option::as_ref),
            health_check: self
                .health_check
                .as_ref()
                .map_or(base.health_check, Option::as_ref),
        }
    }
}

/// `false` (`Some(None)`) or the setting's table (`Some(Some(..))`); a
/// visitor rather than an untagged enum, so an unknown key inside the table
/// is still reported by name.
fn off_or<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct OffOr<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for OffOr<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("false or a table")
        }
        fn visit_bool<E: de::Error>(self, on: bool) -> Result<Option<T>, E> {
            if on {
                Err(E::invalid_value(de::Unexpected::Bool(true), &self))
            } else {
                Ok(None)
            }
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Option<T>, A::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    deserializer.deserialize_any(OffOr(PhantomData)).map(Some)
}

/// What EC2 takes as an image: an AMI ID or an SSM parameter.
pub const IMAGE_PATTERN: &str = r"^(ami-[0-9a-zA-Z]+|resolve:ssm:.+)$";

fn is_image(image: &str) -> bool {
    (image.starts_with("ami-")
        && image.len() > 4
        && image[4..].bytes().all(|b| b.is_ascii_alphanumeric()))
        || (image.starts_with("resolve:ssm:") && image.len() > 12)
}

/// An image EC2 takes: an AMI ID or an SSM parameter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Ec2Image(#[schemars(regex(pattern = IMAGE_PATTERN))] pub String);

/// A shared config of kind `images` on an ec2 driver: one image, or one
/// per key (the region, usually).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(
    title = "images",
    description = "One AMI (or SSM parameter), or one per key (a region, usually): what a pool's image = {shared = NAME[, key = REGION]} resolves to."
)]
pub enum Ec2Images {
    One(Ec2Image),
    PerKey(BTreeMap<String, Ec2Image>),
}

/// The schema of what [`off_or`] reads: `false` or `T`'s table.
fn off_or_schema<T: JsonSchema>(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let table = generator.subschema_for::<T>();
    schemars::json_schema!({ "anyOf": [{ "const": false }, table] })
}

/// Spot instances, with an optional price cap and fallback.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpotConfig {
    /// The most to pay per instance hour, in USD as a decimal string
    /// (`"0.05"`). None: up to the on-demand price (EC2's default).
    #[serde(default)]
    pub max_price: Option<String>,
    /// When spot capacity for the type is short, launch on-demand instead.
    #[serde(default)]
    pub fallback_on_demand: bool,
}

/// An HTTP check a node must pass to be ready: `GET http://ADDRESS:PORT/PATH`
/// answering 2xx.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(deserialize_with = "port")]
    pub port: u16,
    #[serde(default = "default_health_path")]
    pub path: String,
}

/// A port as a document writes it: `8080`, or `8080.0`, which its JSON
/// Schema takes for the same integer.
fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let n = flotilla_domain::Whole::deserialize(d)?.0;
    u16::try_from(n).map_err(|_| de::Error::custom(format!("{n} is not a port (0 to 65535)")))
}

/// Which IP address of an instance flotilla uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressKind {
    /// The private IP (flotilla runs in the same VPC or is connected to it).
    #[default]
    Private,
    /// The public IP (known only once the instance runs).
    Public,
}

fn default_max_batch() -> u32 {
    50
}

fn default_capacity_memory() -> Duration {
    Duration::from_secs(180)
}

fn default_price_cache() -> Duration {
    Duration::from_secs(300)
}

fn default_list_page_size() -> u32 {
    1000
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_health_path() -> String {
    "/healthz".to_owned()
}

/// Refuses a name no EC2 instance type has: a family (`t3`, `c7i-flex`,
/// `u-6tb1`) and a size (`micro`, `2xlarge`, `metal`), as in `t3.micro`.
/// Whether the region offers it is for EC2 to say at launch.
pub fn check_instance_type(name: &str) -> Result<(), String> {
    let size_ok = |size: &str| {
        let numbered = |s: &str, unit: &str| {
            s.strip_suffix(unit).is_some_and(|n| {
                !n.is_empty() && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit())
            })
        };
        matches!(
            size,
            "nano" | "micro" | "small" | "medium" | "large" | "xlarge" | "metal"
        ) || numbered(size, "xlarge")
            || size
                .strip_prefix("metal-")
                .is_some_and(|s| numbered(s, "xl"))
    };
    let family_ok = |family: &str| {
        family.starts_with(|c: char| c.is_ascii_lowercase())
            && family.split('-').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
    };
    match name.split_once('.') {
        Some((family, size)) if family_ok(family) && size_ok(size) => Ok(()),
        Some((family, size)) if family_ok(family) => Err(format!(
            "{name:?} is not an instance type EC2 offers: no size is called {size:?} \
             (sizes are nano, micro, small, medium, large, xlarge, 2xlarge and up, metal)"
        )),
        _ => Err(format!(
            "{name:?} is not an instance type EC2 offers (a family and a size, such as t3.micro)"
        )),
    }
}

impl Ec2Config {
    /// A configuration for `region` with every other setting at its default.
    pub fn new(region: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            endpoint_url: None,
            image: None,
            subnets: Vec::new(),
            security_groups: Vec::new(),
            key_name: None,
            iam_instance_profile: None,
            max_batch: default_max_batch(),
            spot: None,
            health_check: None,
            address: AddressKind::default(),
            capacity_memory: default_capacity_memory(),
            price_cache: default_price_cache(),
            list_page_size: default_list_page_size(),
            request_timeout: default_request_timeout(),
            pools: BTreeMap::new(),
        }
    }

    /// How `pool`'s instances are launched and checked (None: an instance
    /// of no known pool, which gets the driver's settings).
    pub fn launch_settings(&self, pool: Option<&PoolName>) -> LaunchSettings<'_> {
        self.launch_settings_with(pool.and_then(|p| self.pools.get(p)))
    }

    /// How instances of a pool with `options` are launched and checked
    /// (None: the driver's settings).
    pub fn launch_settings_with<'a>(
        &'a self,
        options: Option<&'a Ec2PoolOptions>,
    ) -> LaunchSettings<'a> {
        let driver = LaunchSettings {
            subnets: &self.subnets,
            security_groups: &self.security_groups,
            key_name: self.key_name.as_deref(),
            iam_instance_profile: self.iam_instance_profile.as_deref(),
            spot: self.spot.as_ref(),
            health_check: self.health_check.as_ref(),
        };
        match options {
            Some(options) => options.over(&driver),
            None => driver,
        }
    }

    /// Everything wrong with pool `pool` on this driver, each at its JSON
    /// pointer: what EC2 would refuse on every launch of it, and what this
    /// driver cannot do.
    pub fn check_pool(&self, pool: &PoolName, spec: &PoolSpec) -> Vec<Problem> {
        let mut problems = Vec::new();
        if spec.allow_workload {
            problems.push(Problem::at(
                "allow_workload",
                format!(
                    "pool {pool} launches on ec2 driver {:?}, which runs no per-cluster \
                     workloads; what its nodes run is the pool's init_data (user data)",
                    spec.driver
                ),
            ));
        }
        if spec.image.is_none() && self.image.is_none() {
            problems.push(Problem::at(
                "image",
                format!(
                    "pool {pool} launches on ec2 driver {:?}, and neither the pool nor the \
                     driver names an image (AMI); set the pool's image or drivers.{}.image",
                    spec.driver, spec.driver
                ),
            ));
        }
        if let Some(image) = spec.image.as_ref().and_then(|i| i.id()) {
            if !is_image(image) {
                problems.push(Problem::at(
                    "image",
                    format!(
                        "{image:?} is not an AMI ID (ami-…) or an SSM parameter (resolve:ssm:…)"
                    ),
                ));
            }
        }
        for (i, t) in spec.types.iter().enumerate() {
            if let Err(e) = check_instance_type(t.instance_type.as_str()) {
                problems.push(Problem::new(spec.type_pointer(i), e));
            }
        }
        if let Some(init) = &spec.init_data {
            let checked = spec
                .types
                .iter()
                .try_for_each(|t| crate::user_data::check(init, pool, &t.instance_type));
            if let Err(e) = checked {
                problems.push(Problem::at("init_data", e));
            }
        }
        if let Some(options) = &spec.options {
            match Ec2PoolOptions::from_value(options).and_then(|o| {
                o.validate().map_err(|e| match e {
                    Ec2Error::InvalidPoolOptions { reason } => reason,
                    other => other.to_string(),
                })
            }) {
                Ok(()) => {}
                Err(e) => problems.push(Problem::at("ec2", e)),
            }
        }
        problems
    }

    /// Refuses settings EC2 would refuse on every call, so they are found
    /// when the server starts rather than at the first deploy.
    pub fn validate(&self) -> Result<(), Ec2Error> {
        let invalid = |reason: String| Err(Ec2Error::InvalidConfig { reason });
        let region_ok = !self.region.is_empty()
            && self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return invalid(format!(
                "region {:?} is not an AWS region name such as \"us-west-2\"",
                self.region
            ));
        }
        if let Some(url) = &self.endpoint_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid(format!(
                    "endpoint_url {url:?} must start with http:// or https://"
                ));
            }
        }
        if self.max_batch == 0 {
            return invalid("max_batch is 0; set it to at least 1".to_owned());
        }
        // RunInstances takes MaxCount as a 32-bit signed integer.
        if self.max_batch > i32::MAX as u32 {
            return invalid(format!("max_batch {} is too large", self.max_batch));
        }
        self.launch_settings(None)
            .check()
            .map_err(|reason| Ec2Error::InvalidConfig { reason })?;
        for (pool, options) in &self.pools {
            options.validate().map_err(|e| Ec2Error::InvalidConfig {
                reason: format!("pools.{pool}.ec2: {e}"),
            })?;
        }
        if !(5..=1000).contains(&self.list_page_size) {
            return invalid(format!(
                "list_page_size {} is outside 5..=1000",
                self.list_page_size
            ));
        }
        if self.request_timeout.is_zero() {
            return invalid("request_timeout is 0".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_from_toml() {
        let config: Ec2Config = toml::from_str(
            r#"
            region = "us-west-2"
            endpoint_url = "http://127.0.0.1:5055"
            subnets = ["subnet-a", "subnet-b"]
            security_groups = ["sg-1"]
            key_name = "ops"
            iam_instance_profile = "flotilla-node"
            max_batch = 25
            address = "public"
            capacity_memory = "5m"
            spot = { max_price = "0.05", fallback_on_demand = true }
            health_check = { port = 8080 }
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.subnets, ["subnet-a", "subnet-b"]);
        assert_eq!(config.address, AddressKind::Public);
        assert_eq!(config.capacity_memory, Duration::from_secs(300));
        assert_eq!(config.request_timeout, default_request_timeout());
        assert_eq!(config.health_check.unwrap().path, "/healthz");
        assert!(config.spot.unwrap().fallback_on_demand);
        let minimal: Ec2Config = toml::from_str(r#"region = "eu-west-1""#).unwrap();
        assert_eq!(minimal, Ec2Config::new("eu-west-1"));
        let unknown = toml::from_str::<Ec2Config>("region = \"eu-west-1\"\nsubnet = \"x\"");
        assert!(unknown.unwrap_err().to_string().contains("subnet"));
    }

    #[test]
    fn a_pools_options_replace_the_drivers_key_by_key() {
        let options: Ec2PoolOptions = toml::from_str(
            r#"
            subnets = ["subnet-p"]
            key_name = "pool-key"
            spot = false
            health_check = { port = 9000 }
            "#,
        )
        .unwrap();
        options.validate().unwrap();
        let pool = PoolName::new("p").unwrap();
        let driver = Ec2Config {
            subnets: vec!["subnet-a".into(), "subnet-b".into()],
            security_groups: vec!["sg-1".into()],
            iam_instance_profile: Some("role".into()),
            spot: Some(SpotConfig::default()),
            pools: [(pool.clone(), options)].into(),
            ..Ec2Config::new("us-east-1")
        };
        driver.validate().unwrap();
        let settings = driver.launch_settings(Some(&pool));
        assert_eq!(settings.subnets, ["subnet-p"]);
        assert_eq!(settings.security_groups, ["sg-1"], "kept from the driver");
        assert_eq!(settings.key_name, Some("pool-key"));
        assert_eq!(settings.iam_instance_profile, Some("role"));
        assert_eq!(settings.spot, None, "switched off for the pool");
        assert_eq!(settings.health_check.map(|c| c.port), Some(9000));
        assert_eq!(settings.health_check.unwrap().path, "/healthz");
        // Other pools, and instances of no known pool, get the driver's.
        let other = PoolName::new("q").unwrap();
        for settings in [
            driver.launch_settings(Some(&other)),
            driver.launch_settings(None),
        ] {
            assert_eq!(settings.subnets, ["subnet-a", "subnet-b"]);
            assert_eq!(settings.spot, Some(&SpotConfig::default()));
            assert_eq!(settings.health_check, None);
        }
        // An empty table is plain spot; the driver's spot can be replaced.
        let spot: Ec2PoolOptions = toml::from_str("spot = {}\nhealth_check = false").unwrap();
        assert_eq!(spot.spot, Some(Some(SpotConfig::default())));
        assert_eq!(spot.health_check, Some(None));
        assert_eq!(
            toml::from_str::<Ec2PoolOptions>("").unwrap(),
            Ec2PoolOptions::default()
        );
    }

    #[test]
    fn a_port_is_any_whole_number_json_schema_calls_an_integer() {
        let options: Ec2PoolOptions =
            serde_json::from_value(serde_json::json!({"health_check": {"port": 8080.0}})).unwrap();
        assert_eq!(options.health_check.flatten().map(|c| c.port), Some(8080));
        for bad in [serde_json::json!(80.5), serde_json::json!(70000)] {
            let refused = serde_json::from_value::<Ec2PoolOptions>(
                serde_json::json!({"health_check": {"port": bad}}),
            );
            assert!(refused.is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_pool_options_are_refused_naming_the_key() {
        for (text, key) in [
            ("subnet = [\"s\"]", "subnet"),
            ("spot = { max_prize = \"0.1\" }", "max_prize"),
            ("spot = true", "spot"),
            ("health_check = { port = 80, pth = \"/\" }", "pth"),
            ("health_check = 8080", "health_check"),
            ("region = \"us-east-1\"", "region"),
        ] {
            let e = toml::from_str::<Ec2PoolOptions>(text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text:?}: {e}");
        }
        for (text, key) in [
            ("subnets = [\"\"]", "subnets"),
            ("security_groups = [\"sg-1\", \" \"]", "security_groups"),
            ("key_name = \"\"", "key_name"),
            ("spot = { max_price = \"free\" }", "spot.max_price"),
            ("health_check = { port = 0 }", "health_check.port"),
            (
                "health_check = { port = 80, path = \"up\" }",
                "health_check.path",
            ),
        ] {
            let options: Ec2PoolOptions = toml::from_str(text).unwrap();
            let e = options.validate().unwrap_err();
            assert!(matches!(e, Ec2Error::InvalidPoolOptions { .. }), "{e}");
            assert!(e.to_string().contains(key), "{text:?}: {e}");
            // And inside a driver's configuration, named with the pool.
            let driver = Ec2Config {
                pools: [(PoolName::new("gpu").unwrap(), options)].into(),
                ..Ec2Config::new("us-east-1")
            };
            let e = driver.validate().unwrap_err().to_string();
            assert!(e.contains("pools.gpu.ec2") && e.contains(key), "{e}");
        }
    }

    #[test]
    fn defaults_are_valid_and_bad_values_are_refused() {
        assert!(Ec2Config::new("us-east-1").validate().is_ok());
        let bad = [
            Ec2Config::new(""),
            Ec2Config::new("US East"),
            Ec2Config {
                endpoint_url: Some("127.0.0.1:5000".into()),
                ..Ec2Config::new("us-east-1")
            },
            Ec2Config {
                max_batch: 0,
                ..Ec2Config::new("us-east-1")
            },
            Ec2Config {
                subnets: vec!["subnet-1".into(), " ".into()],
                ..Ec2Config::new("us-east-1")
            },
            Ec2Config {
                spot: Some(SpotConfig {
                    max_price: Some("cheap".into()),
                    fallback_on_demand: false,
                }),
                ..Ec2Config::new("us-east-1")
            },
            Ec2Config {
                health_check: Some(HealthCheck {
                    port: 8080,
                    path: "healthz".into(),
                }),
                ..Ec2Config::new("us-east-1")
            },
            Ec2Config {
                list_page_size: 1001,
                ..Ec2Config::new("us-east-1")
            },
            Ec2Config {
                request_timeout: Duration::ZERO,
                ..Ec2Config::new("us-east-1")
            },
        ];
        for config in bad {
            let err = config.validate().expect_err("invalid config");
            assert!(matches!(err, Ec2Error::InvalidConfig { .. }), "{err}");
        }
    }
}

#[cfg(test)]
mod instance_type_tests {
    use super::*;

    #[test]
    fn instance_type_names_are_a_family_and_a_size() {
        for good in [
            "t3.micro",
            "t3.nano",
            "m5d.24xlarge",
            "c7i-flex.large",
            "u-6tb1.metal",
            "m7i.metal-48xl",
            "mac2-m2pro.metal",
        ] {
            assert_eq!(check_instance_type(good), Ok(()), "{good}");
        }
        let e = check_instance_type("t3.nanoo").unwrap_err();
        assert!(e.contains("no size is called \"nanoo\""), "{e}");
        for bad in [
            "t3",
            "T3.micro",
            "t3.",
            ".micro",
            "t3.0xlarge",
            "t3.micro.x",
            "-t3.micro",
        ] {
            assert!(check_instance_type(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_type_of_a_pool_is_checked_at_its_pointer() {
        let config: Ec2Config =
            toml::from_str("region = \"us-west-2\"\nimage = \"ami-1\"").unwrap();
        let document: flotilla_domain::PoolDocument = serde_json::from_value(serde_json::json!({
            "driver": "aws",
            "instance_types": ["t3.micro", {"name": "t3.nanoo", "price_per_hour": "0.01"}]
        }))
        .unwrap();
        let spec = document.spec(flotilla_domain::PoolSource::Config).unwrap();
        let problems = config.check_pool(&PoolName::new("p").unwrap(), &spec);
        let said: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0]
                .starts_with("/instance_types/1: \"t3.nanoo\" is not an instance type EC2 offers"),
            "{said:?}"
        );
    }
}
