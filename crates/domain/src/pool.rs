//! A pool as data: what its author writes ([`PoolDocument`]: the same
//! fields as a config file's `[pools.NAME]` table or the JSON body of
//! `PUT /api/v1/pools/NAME`), what it means once checked ([`PoolSpec`]),
//! and each thing wrong with it ([`Problem`], at a JSON pointer).
//!
//! The document's JSON Schema is generated from [`PoolDocument`] itself
//! ([`pool_schema`]), so the schema and the parser cannot drift. What a
//! schema cannot say (an amount of money, who an owner is) is checked by
//! [`PoolDocument::spec`]; what only a driver knows, by the driver.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::money::Money;
use crate::names::{InstanceType, Username};
use crate::org::OrgName;
use crate::rollout::{Rollout, RolloutSettings, Whole};

/// The version of [`PoolDocument`]'s schema, stored with every pool
/// written, so a later flotilla knows what shape it reads back.
pub const POOL_SCHEMA_VERSION: u32 = 1;

/// A pool as written. Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "Pool",
    description = "How a cluster's nodes are made: a `[pools.NAME]` table of the config file, or the body of PUT /api/v1/pools/NAME.",
    extend("oneOf" = [{ "required": ["instance_type"] }, { "required": ["instance_types"] }])
)]
pub struct PoolDocument {
    /// The driver (`[drivers.NAME]` of the server's config) that makes its
    /// nodes.
    #[schemars(length(min = 1, max = 64))]
    pub driver: String,
    /// The cloud's name for the kind of instance its nodes are
    /// (`t3.micro`, `local.small`); or write `instance_types` for several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", regex(pattern = r"^[-_.A-Za-z0-9]{1,64}$"))]
    pub instance_type: Option<String>,
    /// Several kinds of instance its nodes may be, instead of one
    /// `instance_type`: each a name (`"t3.micro"`, at the pool's
    /// `price_per_hour`) or `{name, price_per_hour}`. Each node is made
    /// of the cheapest the cloud has capacity for (in the order written
    /// among equal prices); a type the cloud has none of is passed over
    /// until its back-off ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 20), extend("uniqueItems" = true))]
    pub instance_types: Vec<WrittenType>,
    /// The image its nodes boot (an AMI on ec2), or `{shared = "NAME"}`
    /// for the one a shared config of kind `images` gives (with `key`, the
    /// one under that key, such as a region); the driver's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
    /// Handed to each node at boot: on `local`, a shell command the node
    /// agent runs as its workload; on `ec2`, the user data, with
    /// `{{cluster}}`, `{{instance_set}}`, `{{pool}}` and
    /// `{{instance_type}}` filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_data: Option<String>,
    /// Tags set on every node, beside flotilla's own (whose keys start
    /// with `flotilla-` and are reserved).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("propertyNames" = { "minLength": 1, "pattern": "^(?!flotilla-)" }))]
    pub tags: BTreeMap<String, String>,
    /// What one node costs per hour, in dollars (`"0.10"`); organisations
    /// are charged this (of `instance_types`, for those that set no price
    /// of their own). Zero when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "dollars_schema")]
    pub price_per_hour: Option<WrittenDollars>,
    /// Whether the owners of its clusters may run commands on their nodes
    /// (`flotilla exec`); admins always may.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_exec: bool,
    /// The account its nodes accept ssh logins for (`ec2-user`,
    /// `ubuntu`), offered by `flotilla ssh` and `ssh-config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9._][-A-Za-z0-9._]{0,63}$"))]
    pub ssh_user: Option<String>,
    /// Whether its clusters may be deployed with their own workload
    /// (`flotilla deploy --workload`), run instead of `init_data`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_workload: bool,
    /// What the pool is for, shown by `flotilla pool show`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000))]
    pub description: Option<String>,
    /// Who besides admins may change or retire it: account names, and
    /// organisations as `org:NAME` (their owners). Owners change only its
    /// description, tags, image and ssh user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^(org:)?[A-Za-z0-9][-A-Za-z0-9]{0,39}$")))]
    #[schemars(extend("uniqueItems" = true))]
    pub owners: Vec<String>,
    /// The most nodes its clusters may hold together (those shutting down
    /// aside), surges of rollouts included: more wait, and their clusters'
    /// status says so (`pool_full`). No limit when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_nodes: Option<Whole>,
    /// Instances kept booted and idle for jobs: a queued job that fits
    /// one takes it at once rather than waiting for an instance to boot,
    /// and another is made in its place. Each is of the pool's cheapest
    /// type, on demand, and is replaced after `[jobs] warm_max_idle` unused;
    /// its idle time is charged to no organisation. None when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub idle_nodes: Option<Whole>,
    /// How its clusters replace nodes launched from an older version of
    /// it (surge, unavailability, failures before stopping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSettings>,
    /// The ec2 driver's launch settings for this pool, over the driver's
    /// own (pools on an ec2 driver only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2: Option<serde_json::Value>,
}

/// A pool's image: the image itself, or a reference to a shared config
/// that gives it, resolved from the config's latest version at each launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged, deny_unknown_fields)]
pub enum ImageRef {
    /// The image (an AMI ID on ec2).
    Id(#[schemars(length(min = 1))] String),
    /// The image shared config `shared` (of kind `images`) gives: its
    /// value, or the value under `key` (a region, say).
    Shared {
        #[schemars(regex(pattern = r"^[A-Za-z0-9][-_A-Za-z0-9]{0,63}$"))]
        shared: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(min = 1))]
        key: Option<String>,
    },
}

/// One of a pool's `instance_types` as written: its name, or its name
/// with its own price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum WrittenType {
    /// The type, at the pool's `price_per_hour`.
    Name(#[schemars(regex(pattern = r"^[-_.A-Za-z0-9]{1,64}$"))] String),
    /// The type and what one node of it costs per hour.
    Priced(PricedType),
}

/// An instance type with its own price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PricedType {
    #[schemars(regex(pattern = r"^[-_.A-Za-z0-9]{1,64}$"))]
    pub name: String,
    /// What one node of this type costs per hour, in dollars; the
    /// pool's `price_per_hour` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "dollars_schema")]
    pub price_per_hour: Option<WrittenDollars>,
}

impl WrittenType {
    pub fn name(&self) -> &str {
        match self {
            WrittenType::Name(name) => name,
            WrittenType::Priced(p) => &p.name,
        }
    }

    fn price(&self) -> Option<&WrittenDollars> {
        match self {
            WrittenType::Name(_) => None,
            WrittenType::Priced(p) => p.price_per_hour.as_ref(),
        }
    }
}

impl ImageRef {
    /// The image itself, if the pool names one.
    pub fn id(&self) -> Option<&str> {
        match self {
            ImageRef::Id(id) => Some(id),
            ImageRef::Shared { .. } => None,
        }
    }

    /// The shared config it names, if any.
    pub fn shared(&self) -> Option<(&str, Option<&str>)> {
        match self {
            ImageRef::Id(_) => None,
            ImageRef::Shared { shared, key } => Some((shared, key.as_deref())),
        }
    }
}

/// The image a shared config's `value` gives under `key`: a value that is
/// one image gives it (with no key); an object gives its `key`'s.
pub fn image_from(value: &serde_json::Value, key: Option<&str>) -> Result<String, String> {
    match (value, key) {
        (serde_json::Value::String(image), None) => Ok(image.clone()),
        (serde_json::Value::String(_), Some(key)) => Err(format!(
            "it holds one image, not one per key; leave out key ({key:?})"
        )),
        (serde_json::Value::Object(images), Some(key)) => match images.get(key) {
            Some(serde_json::Value::String(image)) => Ok(image.clone()),
            Some(_) => Err(format!("its {key:?} is not an image (a string)")),
            None => Err(format!(
                "it has no image for {key:?} (it has: {})",
                images.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        },
        (serde_json::Value::Object(_), None) => {
            Err("it holds an image per key; name the key (key = \"...\")".to_owned())
        }
        _ => Err("it holds no image".to_owned()),
    }
}

/// A shared config of kind `images`: one image, or one per key (such as a
/// region). Its schema is what every driver publishes as `images`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(
    title = "images",
    description = "One image, or an image per key (a region, say): what a pool's image = {shared = NAME[, key = KEY]} resolves to."
)]
pub enum SharedImages {
    One(#[schemars(length(min = 1))] String),
    PerKey(BTreeMap<String, String>),
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The schema of an amount of dollars as [`WrittenDollars::parse`] takes
/// it: whole micro-dollars, not negative, at most a billion.
fn dollars_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "anyOf": [
            { "type": "string", "pattern": "^[0-9]{1,9}(\\.[0-9]{1,6})?$" },
            { "type": "number", "minimum": 0, "maximum": 1_000_000_000, "multipleOf": 0.000001 },
            { "type": "null" }
        ]
    })
}

/// An amount of dollars as written: a string (`"0.10"`, exact) or a number
/// (`0.10`, read through its shortest decimal form).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum WrittenDollars {
    Text(String),
    Number(f64),
}

impl WrittenDollars {
    /// The amount, which must not be negative.
    pub fn parse(&self) -> Result<Money, String> {
        let text = match self {
            WrittenDollars::Text(t) => t.clone(),
            WrittenDollars::Number(n) => n.to_string(),
        };
        let money: Money = text.parse().map_err(|e| format!("{e}"))?;
        if money.is_negative() {
            return Err(format!("must not be negative, got {money}"));
        }
        Ok(money)
    }
}

/// One thing wrong with a document, at its JSON pointer (RFC 6901; `""`
/// is the whole document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub pointer: String,
    pub message: String,
}

impl Problem {
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            message: message.into(),
        }
    }

    /// At the field `key` of the document.
    pub fn at(key: &str, message: impl Into<String>) -> Self {
        Self::new(pointer(&[key]), message)
    }

    /// A pool that names no instance type.
    pub fn no_type_key() -> Self {
        Self::at(
            "instance_type",
            "missing: name the kind of instance its nodes are (instance_type = \"t3.micro\"), \
             or several (instance_types = [...])",
        )
    }

    /// A pool that names its instance types both ways.
    pub fn both_type_keys() -> Self {
        Self::at(
            "instance_types",
            "write instance_type (one) or instance_types (several), not both",
        )
    }

    /// The pointer as a config file's dotted key under `prefix`
    /// (`pools.gpu` and `/ec2/spot` make `pools.gpu.ec2.spot`).
    pub fn dotted(&self, prefix: &str) -> String {
        let mut key = prefix.to_owned();
        for token in self.pointer.split('/').skip(1) {
            key.push('.');
            key.push_str(&token.replace("~1", "/").replace("~0", "~"));
        }
        key
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pointer.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.pointer, self.message)
        }
    }
}

/// The JSON pointer of the path `tokens`, escaped.
pub fn pointer(tokens: &[&str]) -> String {
    tokens
        .iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// Who besides admins may change a pool.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PoolOwner {
    Account(Username),
    /// The organisation's owners and admins.
    Org(OrgName),
}

impl PoolOwner {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.strip_prefix("org:") {
            Some(org) => OrgName::new(org)
                .map(PoolOwner::Org)
                .map_err(|e| e.to_string()),
            None => Username::new(s)
                .map(PoolOwner::Account)
                .map_err(|e| format!("{e} (an organisation is written org:NAME)")),
        }
    }
}

impl fmt::Display for PoolOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolOwner::Account(a) => write!(f, "{a}"),
            PoolOwner::Org(o) => write!(f, "org:{o}"),
        }
    }
}

/// Where a pool comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolSource {
    /// The server's config file: changed there, read-only through the API.
    Config,
    /// Written through the API; `version` counts its writes.
    Stored { version: u64 },
}

/// The most instances a pool keeps warm for jobs.
pub const MAX_IDLE_NODES: u32 = 100;

/// A pool: how to make the nodes of a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    /// The name of the driver (instance set) that makes them.
    pub driver: String,
    /// The kinds of instance its nodes may be, each with its price, as
    /// written (at least one); nodes are made of them in the order of
    /// [`PoolSpec::preference`].
    pub types: Vec<PoolType>,
    /// Whether they were written as a list (`instance_types`), even of
    /// one, rather than as one `instance_type`.
    pub types_listed: bool,
    pub image: Option<ImageRef>,
    pub init_data: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// Whether the owners of its clusters may run commands on their nodes
    /// (`flotilla exec`); admins always may.
    pub allow_exec: bool,
    /// The account its nodes accept ssh logins for, at their address
    /// (`flotilla ssh`); None: no ssh.
    pub ssh_user: Option<String>,
    /// Whether its clusters may bring their own workload (a command run
    /// instead of `init_data`), whoever deploys them.
    pub allow_workload: bool,
    pub description: Option<String>,
    pub owners: Vec<PoolOwner>,
    /// The most nodes its clusters may hold together; None: no limit.
    pub max_nodes: Option<u32>,
    /// Instances kept booted and idle for jobs (0: none).
    pub idle_nodes: u32,
    /// How its clusters replace outdated nodes.
    pub rollout: Rollout,
    /// The driver's own section (`ec2`), as written: the driver reads it.
    pub options: Option<serde_json::Value>,
    pub source: PoolSource,
}

/// A kind of instance a pool's nodes may be, and what one costs per hour
/// (organisations are charged this for each node of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolType {
    pub instance_type: InstanceType,
    pub price_per_hour: Money,
}

impl PoolSpec {
    /// A pool of `driver`'s `instance_type` nodes, free, everything else
    /// unset.
    pub fn new(driver: impl Into<String>, instance_type: InstanceType) -> Self {
        Self {
            driver: driver.into(),
            types: vec![PoolType {
                instance_type,
                price_per_hour: Money::ZERO,
            }],
            types_listed: false,
            image: None,
            init_data: None,
            tags: BTreeMap::new(),
            allow_exec: false,
            ssh_user: None,
            allow_workload: false,
            description: None,
            owners: Vec::new(),
            max_nodes: None,
            idle_nodes: 0,
            rollout: Rollout::default(),
            options: None,
            source: PoolSource::Config,
        }
    }
}

/// What a node costs per hour by its instance type: a pool's prices.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodePrices {
    types: Vec<(InstanceType, Money)>,
    /// A type not listed.
    otherwise: Money,
}

impl NodePrices {
    /// Every node at `price`, whatever its type.
    pub fn flat(price: Money) -> Self {
        Self {
            types: Vec::new(),
            otherwise: price,
        }
    }

    /// What a node of `ty` costs per hour.
    pub fn of(&self, ty: &InstanceType) -> Money {
        self.types
            .iter()
            .find(|(t, _)| t == ty)
            .map_or(self.otherwise, |(_, price)| *price)
    }
}

impl PoolSpec {
    /// This pool with every one of its types at `price` per node-hour.
    pub fn with_price(mut self, price: Money) -> Self {
        for t in &mut self.types {
            t.price_per_hour = price;
        }
        self
    }

    /// Its types in the order nodes are made of them: the cheapest first,
    /// as written among equal prices.
    pub fn preference(&self) -> Vec<&PoolType> {
        let mut types: Vec<&PoolType> = self.types.iter().collect();
        types.sort_by_key(|t| t.price_per_hour);
        types
    }

    /// The type nodes are made of while the cloud has capacity for it
    /// (None only for a pool built with no type, which no check passes).
    pub fn preferred(&self) -> Option<&InstanceType> {
        self.preference().first().map(|t| &t.instance_type)
    }

    /// Whether its nodes may be of `ty`.
    pub fn offers(&self, ty: &InstanceType) -> bool {
        self.types.iter().any(|t| &t.instance_type == ty)
    }

    /// What its nodes cost, by type: each its type's price; a type the
    /// pool no longer names (a node launched before it changed), the
    /// dearest of its types', so that none is charged less than the
    /// pool's nodes cost.
    pub fn prices(&self) -> NodePrices {
        NodePrices {
            types: self
                .types
                .iter()
                .map(|t| (t.instance_type.clone(), t.price_per_hour))
                .collect(),
            otherwise: self.dearest(),
        }
    }

    /// The most one of its nodes costs per hour: what forecasts count
    /// each node at, since a node may be of any of its types.
    pub fn dearest(&self) -> Money {
        self.types
            .iter()
            .map(|t| t.price_per_hour)
            .max()
            .unwrap_or(Money::ZERO)
    }

    /// The JSON pointer of its `index`th type as written.
    pub fn type_pointer(&self, index: usize) -> String {
        if self.types_listed {
            pointer(&["instance_types", &index.to_string()])
        } else {
            pointer(&["instance_type"])
        }
    }

    /// A document that means this pool.
    pub fn document(&self) -> PoolDocument {
        let dollars = |m: Money| WrittenDollars::Text(m.to_string());
        let (instance_type, instance_types, price_per_hour) = match self.types.as_slice() {
            [only] if !self.types_listed => (
                Some(only.instance_type.to_string()),
                Vec::new(),
                (only.price_per_hour != Money::ZERO).then(|| dollars(only.price_per_hour)),
            ),
            types => (
                None,
                types
                    .iter()
                    .map(|t| {
                        WrittenType::Priced(PricedType {
                            name: t.instance_type.to_string(),
                            price_per_hour: Some(dollars(t.price_per_hour)),
                        })
                    })
                    .collect(),
                None,
            ),
        };
        PoolDocument {
            driver: self.driver.clone(),
            instance_type,
            instance_types,
            image: self.image.clone(),
            init_data: self.init_data.clone(),
            tags: self.tags.clone(),
            price_per_hour,
            allow_exec: self.allow_exec,
            ssh_user: self.ssh_user.clone(),
            allow_workload: self.allow_workload,
            description: self.description.clone(),
            owners: self.owners.iter().map(ToString::to_string).collect(),
            max_nodes: self.max_nodes.map(Whole),
            idle_nodes: (self.idle_nodes > 0).then_some(Whole(self.idle_nodes)),
            rollout: self.rollout.written(),
            ec2: self.options.clone(),
        }
    }
}

impl PoolDocument {
    /// What the document means, or everything wrong with it that a schema
    /// cannot say. `source` is where it comes from.
    pub fn spec(&self, source: PoolSource) -> Result<PoolSpec, Vec<Problem>> {
        let mut problems = Vec::new();
        for key in self.tags.keys() {
            if key.starts_with("flotilla-") {
                problems.push(Problem::new(
                    pointer(&["tags", key]),
                    "tags starting with flotilla- are reserved for ownership",
                ));
            }
        }
        let price_per_hour = match &self.price_per_hour {
            Some(d) => d
                .parse()
                .map_err(|e| problems.push(Problem::at("price_per_hour", e)))
                .unwrap_or(Money::ZERO),
            None => Money::ZERO,
        };
        let types = self.types(price_per_hour, &mut problems);
        if let Some(user) = &self.ssh_user {
            let ok = !user.is_empty()
                && !user.starts_with('-')
                && user
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !ok {
                problems.push(Problem::at(
                    "ssh_user",
                    format!(
                        "{user:?} is not an account name (letters, digits, '.', '_' and '-'; e.g. \"ec2-user\")"
                    ),
                ));
            }
        }
        let mut owners = Vec::new();
        for (i, owner) in self.owners.iter().enumerate() {
            match PoolOwner::parse(owner) {
                Ok(o) if owners.contains(&o) => problems.push(Problem::new(
                    pointer(&["owners", &i.to_string()]),
                    format!("{owner} is named twice"),
                )),
                Ok(o) => owners.push(o),
                Err(e) => problems.push(Problem::new(pointer(&["owners", &i.to_string()]), e)),
            }
        }
        if self.max_nodes == Some(Whole(0)) {
            problems.push(Problem::at(
                "max_nodes",
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        if self.idle_nodes.is_some_and(|w| w.0 > MAX_IDLE_NODES) {
            problems.push(Problem::at(
                "idle_nodes",
                format!("must be at most {MAX_IDLE_NODES}"),
            ));
        }
        let rollout = Rollout::parse(self.rollout.as_ref())
            .map_err(|p| problems.extend(p))
            .unwrap_or_default();
        if let Some(ec2) = &self.ec2 {
            if !ec2.is_object() {
                problems.push(Problem::at("ec2", "expected a table (an object)"));
            }
        }
        match types {
            Some(types) if problems.is_empty() => Ok(PoolSpec {
                driver: self.driver.clone(),
                types,
                types_listed: self.instance_type.is_none(),
                image: self.image.clone(),
                init_data: self.init_data.clone(),
                tags: self.tags.clone(),
                allow_exec: self.allow_exec,
                ssh_user: self.ssh_user.clone(),
                allow_workload: self.allow_workload,
                description: self.description.clone(),
                owners,
                max_nodes: self.max_nodes.map(|w| w.0),
                idle_nodes: self.idle_nodes.map_or(0, |w| w.0),
                rollout,
                options: self.ec2.clone(),
                source,
            }),
            _ => Err(problems),
        }
    }
}

impl PoolDocument {
    /// Its instance types with their prices (`price_per_hour` for those
    /// that name none), or None with what is wrong in `problems`.
    fn types(&self, price_per_hour: Money, problems: &mut Vec<Problem>) -> Option<Vec<PoolType>> {
        let written: Vec<(String, &str, Option<&WrittenDollars>)> =
            match (&self.instance_type, self.instance_types.as_slice()) {
                (Some(_), [_, ..]) => {
                    problems.push(Problem::both_type_keys());
                    return None;
                }
                (None, []) => {
                    problems.push(Problem::no_type_key());
                    return None;
                }
                (Some(one), _) => vec![(pointer(&["instance_type"]), one.as_str(), None)],
                (None, listed) => listed
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        (
                            pointer(&["instance_types", &i.to_string()]),
                            t.name(),
                            t.price(),
                        )
                    })
                    .collect(),
            };
        let before = problems.len();
        let mut types: Vec<PoolType> = Vec::new();
        for (at, name, price) in written {
            let Ok(instance_type) = InstanceType::new(name)
                .map_err(|e| problems.push(Problem::new(&at, e.to_string())))
            else {
                continue;
            };
            if types.iter().any(|t| t.instance_type == instance_type) {
                problems.push(Problem::new(&at, format!("{name} is named twice")));
                continue;
            }
            let price_per_hour = match price {
                Some(d) => match d.parse() {
                    Ok(price) => price,
                    Err(e) => {
                        problems.push(Problem::new(format!("{at}/price_per_hour"), e));
                        continue;
                    }
                },
                None => price_per_hour,
            };
            types.push(PoolType {
                instance_type,
                price_per_hour,
            });
        }
        (problems.len() == before).then_some(types)
    }
}

/// The JSON Schema of a pool on driver `driver`: [`PoolDocument`]'s, with
/// `driver` fixed to the name, and the driver's own section `(key,
/// schema)` if it reads one (every other driver's section refused).
pub fn pool_schema(driver: &str, section: Option<(&str, serde_json::Value)>) -> serde_json::Value {
    let mut schema = schema_of::<PoolDocument>();
    let properties = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
        .expect("a struct's schema has properties");
    if let Some(d) = properties.get_mut("driver") {
        d["const"] = serde_json::Value::String(driver.to_owned());
    }
    properties.remove("ec2");
    if let Some((key, section)) = section {
        properties.insert(key.to_owned(), section);
    }
    schema["$id"] = format!("urn:flotilla:schema:pool:{driver}").into();
    schema
}

/// `T`'s JSON Schema (draft 2020-12), every subschema inline, so a part
/// of it can be set into another schema as it is.
pub fn schema_of<T: JsonSchema>() -> serde_json::Value {
    schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(json: serde_json::Value) -> PoolDocument {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_document_means_a_spec() {
        let d = doc(serde_json::json!({
            "driver": "local", "instance_type": "local.small", "price_per_hour": "0.10",
            "owners": ["alice", "org:physics"], "tags": {"team": "a"}
        }));
        let s = d.spec(PoolSource::Stored { version: 3 }).unwrap();
        assert_eq!(s.types[0].price_per_hour, "0.10".parse().unwrap());
        assert_eq!(
            s.owners,
            vec![
                PoolOwner::Account(Username::new("alice").unwrap()),
                PoolOwner::Org(OrgName::new("physics").unwrap())
            ]
        );
        assert_eq!(s.source, PoolSource::Stored { version: 3 });
        assert_eq!(s.document().spec(s.source).unwrap(), s, "round trip");
    }

    #[test]
    fn every_problem_is_reported_at_its_pointer() {
        let d = doc(serde_json::json!({
            "driver": "local", "instance_type": "a b", "price_per_hour": "-1",
            "ssh_user": "-oProxy", "tags": {"flotilla-x/y": "1"},
            "owners": ["alice", "alice", "org:"]
        }));
        let problems = d.spec(PoolSource::Config).unwrap_err();
        let pointers: Vec<&str> = problems.iter().map(|p| p.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/tags/flotilla-x~1y",
                "/price_per_hour",
                "/instance_type",
                "/ssh_user",
                "/owners/1",
                "/owners/2"
            ],
            "{problems:?}"
        );
        assert_eq!(problems[0].dotted("pools.p"), "pools.p.tags.flotilla-x/y");
    }

    #[test]
    fn several_types_each_with_its_price_cheapest_first() {
        let d = doc(serde_json::json!({
            "driver": "aws", "price_per_hour": "0.05",
            "instance_types": [
                {"name": "m5.large", "price_per_hour": "0.096"},
                "t3.large",
                {"name": "m5a.large", "price_per_hour": 0.086},
                {"name": "m6i.large"}
            ]
        }));
        let s = d.spec(PoolSource::Config).unwrap();
        let names: Vec<&str> = s
            .preference()
            .iter()
            .map(|t| t.instance_type.as_str())
            .collect();
        assert_eq!(names, ["t3.large", "m6i.large", "m5a.large", "m5.large"]);
        assert_eq!(s.preferred().unwrap().as_str(), "t3.large");
        let ty = |n: &str| InstanceType::new(n).unwrap();
        assert_eq!(s.prices().of(&ty("m5a.large")), "0.086".parse().unwrap());
        assert_eq!(
            s.prices().of(&ty("m6i.large")),
            "0.05".parse().unwrap(),
            "the pool's"
        );
        assert_eq!(
            s.prices().of(&ty("c5.large")),
            "0.096".parse().unwrap(),
            "not its: the dearest"
        );
        assert_eq!(s.dearest(), "0.096".parse().unwrap());
        assert_eq!(s.type_pointer(2), "/instance_types/2");
        assert_eq!(s.document().spec(s.source).unwrap(), s, "round trip");

        let one = doc(serde_json::json!({"driver": "aws", "instance_types": ["t3.micro"]}))
            .spec(PoolSource::Config)
            .unwrap();
        assert_eq!(
            one.type_pointer(0),
            "/instance_types/0",
            "a list of one stays a list"
        );
        assert_eq!(one.document().spec(one.source).unwrap(), one);
    }

    #[test]
    fn a_pool_names_its_types_once_one_way() {
        let problems = |json| -> Vec<String> {
            doc(json)
                .spec(PoolSource::Config)
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        let p = problems(serde_json::json!({"driver": "aws"}));
        assert!(p[0].starts_with("/instance_type: missing"), "{p:?}");
        let p = problems(
            serde_json::json!({"driver": "aws", "instance_type": "a", "instance_types": ["b"]}),
        );
        assert!(
            p[0].starts_with("/instance_types: write instance_type"),
            "{p:?}"
        );
        let p = problems(serde_json::json!({"driver": "aws", "instance_types": [
            "t3.micro", "t3.micro", "a b", {"name": "c", "price_per_hour": "-1"}
        ]}));
        let pointers: Vec<&str> = p.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            pointers,
            [
                "/instance_types/1",
                "/instance_types/2",
                "/instance_types/3/price_per_hour"
            ],
            "{p:?}"
        );
    }

    #[test]
    fn an_image_is_named_or_taken_from_a_shared_config() {
        let d = doc(
            serde_json::json!({"driver": "aws", "instance_type": "t3.micro",
            "image": {"shared": "base", "key": "us-west-2"}}),
        );
        assert_eq!(
            d.image.as_ref().unwrap().shared(),
            Some(("base", Some("us-west-2")))
        );
        let d = doc(
            serde_json::json!({"driver": "aws", "instance_type": "t3.micro",
            "image": "ami-1"}),
        );
        assert_eq!(d.image.as_ref().unwrap().id(), Some("ami-1"));
        let per_region = serde_json::json!({"us-west-2": "ami-w", "eu-west-1": "ami-e"});
        assert_eq!(image_from(&per_region, Some("us-west-2")).unwrap(), "ami-w");
        let e = image_from(&per_region, Some("ap-south-1")).unwrap_err();
        assert!(e.contains("eu-west-1, us-west-2"), "{e}");
        assert!(image_from(&per_region, None).is_err());
        assert_eq!(
            image_from(&serde_json::json!("ami-1"), None).unwrap(),
            "ami-1"
        );
        assert!(image_from(&serde_json::json!("ami-1"), Some("x")).is_err());
    }

    #[test]
    fn the_schema_names_the_driver_and_only_its_section() {
        let s = pool_schema("local", None);
        assert_eq!(s["properties"]["driver"]["const"], "local");
        assert!(s["properties"].get("ec2").is_none());
        assert_eq!(s["additionalProperties"], false);
        let s = pool_schema("aws", Some(("ec2", serde_json::json!({"type": "object"}))));
        assert_eq!(s["properties"]["ec2"]["type"], "object");
        let required: Vec<&str> = s["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(required, ["driver"]);
        assert_eq!(s["properties"]["instance_types"]["minItems"], 1);
    }
}
