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
    description = "How a cluster's nodes are made: a `[pools.NAME]` table of the config file, or the body of PUT /api/v1/pools/NAME."
)]
pub struct PoolDocument {
    /// The driver (`[drivers.NAME]` of the server's config) that makes its
    /// nodes.
    #[schemars(length(min = 1, max = 64))]
    pub driver: String,
    /// The cloud's name for the kind of instance its nodes are
    /// (`t3.micro`, `local.small`).
    #[schemars(regex(pattern = r"^[-_.A-Za-z0-9]{1,64}$"))]
    pub instance_type: String,
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
    /// are charged this. Zero when absent.
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

/// A pool: how to make the nodes of a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    /// The name of the driver (instance set) that makes them.
    pub driver: String,
    pub instance_type: InstanceType,
    pub image: Option<ImageRef>,
    pub init_data: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// What one node costs per hour (organisations are charged this).
    pub price_per_hour: Money,
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
    /// How its clusters replace outdated nodes.
    pub rollout: Rollout,
    /// The driver's own section (`ec2`), as written: the driver reads it.
    pub options: Option<serde_json::Value>,
    pub source: PoolSource,
}

impl PoolSpec {
    /// A pool of `driver`'s `instance_type` nodes, everything else unset.
    pub fn new(driver: impl Into<String>, instance_type: InstanceType) -> Self {
        Self {
            driver: driver.into(),
            instance_type,
            image: None,
            init_data: None,
            tags: BTreeMap::new(),
            price_per_hour: Money::ZERO,
            allow_exec: false,
            ssh_user: None,
            allow_workload: false,
            description: None,
            owners: Vec::new(),
            max_nodes: None,
            rollout: Rollout::default(),
            options: None,
            source: PoolSource::Config,
        }
    }
}

impl PoolSpec {
    /// A document that means this pool.
    pub fn document(&self) -> PoolDocument {
        PoolDocument {
            driver: self.driver.clone(),
            instance_type: self.instance_type.to_string(),
            image: self.image.clone(),
            init_data: self.init_data.clone(),
            tags: self.tags.clone(),
            price_per_hour: (self.price_per_hour != Money::ZERO)
                .then(|| WrittenDollars::Text(self.price_per_hour.to_string())),
            allow_exec: self.allow_exec,
            ssh_user: self.ssh_user.clone(),
            allow_workload: self.allow_workload,
            description: self.description.clone(),
            owners: self.owners.iter().map(ToString::to_string).collect(),
            max_nodes: self.max_nodes.map(Whole),
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
        let instance_type = InstanceType::new(self.instance_type.as_str())
            .map_err(|e| problems.push(Problem::at("instance_type", e.to_string())))
            .ok();
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
        let rollout = Rollout::parse(self.rollout.as_ref())
            .map_err(|p| problems.extend(p))
            .unwrap_or_default();
        if let Some(ec2) = &self.ec2 {
            if !ec2.is_object() {
                problems.push(Problem::at("ec2", "expected a table (an object)"));
            }
        }
        match instance_type {
            Some(instance_type) if problems.is_empty() => Ok(PoolSpec {
                driver: self.driver.clone(),
                instance_type,
                image: self.image.clone(),
                init_data: self.init_data.clone(),
                tags: self.tags.clone(),
                price_per_hour,
                allow_exec: self.allow_exec,
                ssh_user: self.ssh_user.clone(),
                allow_workload: self.allow_workload,
                description: self.description.clone(),
                owners,
                max_nodes: self.max_nodes.map(|w| w.0),
                rollout,
                options: self.ec2.clone(),
                source,
            }),
            _ => Err(problems),
        }
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
        assert_eq!(s.price_per_hour, "0.10".parse().unwrap());
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
                "/instance_type",
                "/tags/flotilla-x~1y",
                "/price_per_hour",
                "/ssh_user",
                "/owners/1",
                "/owners/2"
            ],
            "{problems:?}"
        );
        assert_eq!(problems[1].dotted("pools.p"), "pools.p.tags.flotilla-x/y");
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
        assert_eq!(required, ["driver", "instance_type"]);
    }
}
