//! Drift and rolling replacement: what version of its pool a node was
//! launched from ([`LaunchVersion`]), and how fast a cluster may replace the
//! nodes of an older one ([`RolloutSettings`] as written, [`Rollout`] as
//! meant).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::names::InstanceType;
use crate::plan::{Budgets, Launches};
use crate::pool::{PoolSpec, Problem};

/// A fingerprint of the launch configuration a node got: its pool's
/// driver, its instance type, the image (a shared config's resolved to the image
/// it gave), init data, tags and driver section. What a pool says of
/// anything else (price, owners, description, rollout settings) does not
/// change it, so only a change its nodes would boot differently with
/// replaces them. Set on every node at creation as a tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LaunchVersion(String);

/// Hex digits of a [`LaunchVersion`]: 64 bits of SHA-256, plenty to tell a
/// pool's launch configurations apart.
const VERSION_DIGITS: usize = 16;

impl LaunchVersion {
    /// The version of `pool`'s launch configuration for a node of
    /// `instance_type`, its image resolved to `image` (None: the pool names
    /// none, or names the image itself).
    pub fn of(pool: &PoolSpec, instance_type: &InstanceType, image: Option<&str>) -> LaunchVersion {
        let image = image
            .map(str::to_owned)
            .or_else(|| pool.image.as_ref().and_then(|i| i.id().map(str::to_owned)));
        Self::digest(&serde_json::json!({
            "driver": pool.driver,
            "instance_type": instance_type.as_str(),
            "image": image,
            "init_data": pool.init_data,
            "tags": pool.tags,
            "options": pool.options,
        }))
    }

    fn digest(value: &serde_json::Value) -> LaunchVersion {
        use sha2::Digest;
        let mut text = String::new();
        canonical(value, &mut text);
        let digest = sha2::Sha256::digest(text.as_bytes());
        LaunchVersion(crate::hex(&digest[..VERSION_DIGITS / 2]))
    }

    /// A version as a node's tag holds it; None if it is not one.
    pub fn parse(s: &str) -> Option<LaunchVersion> {
        (s.len() == VERSION_DIGITS && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| LaunchVersion(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a pool launches now, its image resolved: each of its types' launch
/// version, and the pool's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolLaunch {
    /// The image its nodes boot, resolved from a shared config (None: the
    /// pool names the image itself, or none).
    pub image: Option<String>,
    /// The pool's version: what its rollouts roll out to, what a stopped
    /// rollout is held at, what status shows. A pool of one type has that
    /// type's; a pool of several, one made of all of theirs, so adding or
    /// dropping a type makes a new one (but replaces no node of a type it
    /// keeps).
    pub version: LaunchVersion,
    /// Each type's version, in the pool's order of preference.
    pub types: Vec<(InstanceType, LaunchVersion)>,
}

impl PoolLaunch {
    /// What `pool` launches with its image resolved to `image`.
    pub fn of(pool: &PoolSpec, image: Option<String>) -> Self {
        let types: Vec<(InstanceType, LaunchVersion)> = pool
            .preference()
            .into_iter()
            .map(|t| {
                let v = LaunchVersion::of(pool, &t.instance_type, image.as_deref());
                (t.instance_type.clone(), v)
            })
            .collect();
        let version = match types.as_slice() {
            [(_, only)] => only.clone(),
            several => {
                let mut each: Vec<(&str, &str)> = several
                    .iter()
                    .map(|(t, v)| (t.as_str(), v.as_str()))
                    .collect();
                each.sort();
                LaunchVersion::digest(&serde_json::json!({ "types": each }))
            }
        };
        Self {
            image,
            version,
            types,
        }
    }

    /// The version a node of `ty` is launched at; None if the pool makes
    /// no such nodes.
    pub fn version_of(&self, ty: &InstanceType) -> Option<&LaunchVersion> {
        self.types.iter().find(|(t, _)| t == ty).map(|(_, v)| v)
    }

    /// Whether a node of `ty` launched at `version` is what the pool
    /// launches now.
    pub fn is_current(&self, ty: &InstanceType, version: Option<&LaunchVersion>) -> bool {
        self.types
            .iter()
            .any(|(t, v)| crate::plan::launched_as(t, Some(v), ty, version))
    }

    /// What the planner takes for current.
    pub fn launches(&self) -> Launches {
        Launches(
            self.types
                .iter()
                .map(|(t, v)| (t.clone(), Some(v.clone())))
                .collect(),
        )
    }
}

impl fmt::Display for LaunchVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `value` as JSON with every object's keys in order, whatever order the
/// map keeps them in, so equal values always hash alike.
fn canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push(':');
                canonical(&map[key], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

// JSON Schema takes `2.0` for the integer 2, so the parser must too, or a
// document its schema accepts would be refused.
/// A whole number (`2`, or `2.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Whole(pub u32);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Whole;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number from 0 to 4294967295")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Whole, E> {
                u32::try_from(v)
                    .map(Whole)
                    .map_err(|_| E::custom(format!("{v} is more than 4294967295")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Whole, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Whole, E> {
                if v.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&v) {
                    Ok(Whole(v as u32))
                } else {
                    Err(E::custom(format!(
                        "{v} is not a whole number from 0 to 4294967295"
                    )))
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A number of nodes, or a share of a cluster's wanted count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeBudget {
    Count(u32),
    /// Percent, 0 to 100.
    Percent(u32),
}

impl NodeBudget {
    /// The nodes it allows a cluster that wants `wanted`: a share rounded
    /// up (`round_up`) or down.
    pub fn of(self, wanted: u32, round_up: bool) -> u32 {
        match self {
            NodeBudget::Count(n) => n,
            NodeBudget::Percent(p) => {
                let scaled = u64::from(wanted) * u64::from(p);
                let n = if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                };
                n as u32
            }
        }
    }

    fn parse(written: &WrittenBudget) -> Result<Self, String> {
        match written {
            WrittenBudget::Count(n) => Ok(NodeBudget::Count(n.0)),
            WrittenBudget::Percent(text) => {
                let digits = text.strip_suffix('%').unwrap_or(text);
                match digits.parse::<u32>() {
                    Ok(p) if p <= 100 && text.ends_with('%') => Ok(NodeBudget::Percent(p)),
                    _ => Err(format!(
                        "{text:?} is neither a number of nodes nor a percentage from 0% to 100%"
                    )),
                }
            }
        }
    }

    fn written(self) -> WrittenBudget {
        match self {
            NodeBudget::Count(n) => WrittenBudget::Count(Whole(n)),
            NodeBudget::Percent(p) => WrittenBudget::Percent(format!("{p}%")),
        }
    }
}

impl fmt::Display for NodeBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeBudget::Count(n) => write!(f, "{n}"),
            NodeBudget::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// A [`NodeBudget`] as written: `2` or `"25%"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum WrittenBudget {
    Count(#[schemars(range(max = 10000))] Whole),
    Percent(#[schemars(regex(pattern = r"^[0-9]{1,3}%$"))] String),
}

/// How a pool's clusters replace nodes launched from an older version of
/// it, as written (`[pools.NAME.rollout]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutSettings {
    /// Nodes a cluster may have beyond its wanted count while it replaces
    /// outdated ones: a number, or a percentage of the wanted count
    /// (`"25%"`, rounded up). Default `"25%"` (so at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<WrittenBudget>,
    /// Ready nodes a cluster may lack while it replaces outdated ones, for
    /// pools that cannot make more nodes than wanted: a number, or a
    /// percentage (rounded down). Default 0: an outdated node goes only
    /// once its replacement is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<WrittenBudget>,
    /// Replacements that fail in a row (a create the cloud refuses, a node
    /// that never becomes ready) before the rollout stops and says why,
    /// instead of trying again and again. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_failures: Option<Whole>,
}

/// How a pool's clusters replace outdated nodes, as meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollout {
    pub max_surge: NodeBudget,
    pub max_unavailable: NodeBudget,
    pub max_failures: u32,
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            max_surge: NodeBudget::Percent(25),
            max_unavailable: NodeBudget::Count(0),
            max_failures: 3,
        }
    }
}

impl Rollout {
    /// The budgets of a cluster that wants `wanted` nodes.
    pub fn budgets(&self, wanted: u32) -> Budgets {
        Budgets::new(
            self.max_surge.of(wanted, true),
            self.max_unavailable.of(wanted, false),
            wanted,
        )
    }

    /// What `written` means, or every problem with it (at pointers under
    /// `/rollout`).
    pub fn parse(written: Option<&RolloutSettings>) -> Result<Rollout, Vec<Problem>> {
        let mut rollout = Rollout::default();
        let Some(w) = written else {
            return Ok(rollout);
        };
        let mut problems = Vec::new();
        let at = |key: &str| crate::pool::pointer(&["rollout", key]);
        if let Some(s) = &w.max_surge {
            match NodeBudget::parse(s) {
                Ok(b) => rollout.max_surge = b,
                Err(e) => problems.push(Problem::new(at("max_surge"), e)),
            }
        }
        if let Some(u) = &w.max_unavailable {
            match NodeBudget::parse(u) {
                Ok(b) => rollout.max_unavailable = b,
                Err(e) => problems.push(Problem::new(at("max_unavailable"), e)),
            }
        }
        if let Some(Whole(f)) = w.max_failures {
            if f == 0 {
                problems.push(Problem::new(at("max_failures"), "must be at least 1"));
            } else {
                rollout.max_failures = f;
            }
        }
        let zero = |b: NodeBudget| matches!(b, NodeBudget::Count(0) | NodeBudget::Percent(0));
        if problems.is_empty() && zero(rollout.max_surge) && zero(rollout.max_unavailable) {
            problems.push(Problem::new(
                crate::pool::pointer(&["rollout"]),
                "max_surge and max_unavailable are both 0: no node could ever be replaced; allow a surge (max_surge = 1) or, for a pool that cannot make more nodes than wanted, an unavailable node (max_unavailable = 1)",
            ));
        }
        if problems.is_empty() {
            Ok(rollout)
        } else {
            Err(problems)
        }
    }

    /// The settings that mean this rollout; None for the default.
    pub fn written(&self) -> Option<RolloutSettings> {
        let d = Rollout::default();
        (*self != d).then(|| RolloutSettings {
            max_surge: (self.max_surge != d.max_surge).then(|| self.max_surge.written()),
            max_unavailable: (self.max_unavailable != d.max_unavailable)
                .then(|| self.max_unavailable.written()),
            max_failures: (self.max_failures != d.max_failures).then_some(Whole(self.max_failures)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::ImageRef;

    fn pool() -> PoolSpec {
        PoolSpec::new("aws", InstanceType::new("t3.micro").unwrap())
    }

    fn version(pool: &PoolSpec, image: Option<&str>) -> LaunchVersion {
        PoolLaunch::of(pool, image.map(str::to_owned)).version
    }

    #[test]
    fn the_version_follows_the_launch_configuration_only() {
        let base = version(&pool(), None);
        assert_eq!(base, version(&pool(), None), "stable");
        assert_eq!(LaunchVersion::parse(base.as_str()), Some(base.clone()));

        let mut priced = pool();
        priced.types[0].price_per_hour = "0.10".parse().unwrap();
        priced.description = Some("cheap".into());
        assert_eq!(version(&priced, None), base, "price is not launch");

        let mut bigger = pool();
        bigger.types[0].instance_type = InstanceType::new("t3.large").unwrap();
        assert_ne!(version(&bigger, None), base);

        let mut imaged = pool();
        imaged.image = Some(ImageRef::Id("ami-1".into()));
        assert_eq!(
            version(&imaged, None),
            version(&pool(), Some("ami-1")),
            "an image named and the same image resolved from a shared config launch alike"
        );
        assert_ne!(
            version(&pool(), Some("ami-1")),
            version(&pool(), Some("ami-2"))
        );

        let mut a = pool();
        a.options = Some(serde_json::json!({"spot": false, "subnets": ["s-1"]}));
        let mut b = pool();
        b.options = Some(serde_json::from_str(r#"{"subnets": ["s-1"], "spot": false}"#).unwrap());
        assert_eq!(version(&a, None), version(&b, None));
    }

    #[test]
    fn each_type_has_its_version_and_the_pool_one_of_them_all() {
        let micro = InstanceType::new("t3.micro").unwrap();
        let small = InstanceType::new("t3.small").unwrap();
        let one = PoolLaunch::of(&pool(), None);
        assert_eq!(
            one.version_of(&micro),
            Some(&one.version),
            "one type: its own"
        );

        let mut two = pool();
        two.types.push(crate::PoolType {
            instance_type: small.clone(),
            price_per_hour: crate::Money::ZERO,
        });
        two.types_listed = true;
        let both = PoolLaunch::of(&two, None);
        assert_eq!(
            both.version_of(&micro),
            one.version_of(&micro),
            "adding a type outdates no node of the others"
        );
        assert!(both.is_current(&micro, one.version_of(&micro)));
        assert!(both.is_current(&small, both.version_of(&small)));
        assert!(!both.is_current(&small, one.version_of(&micro)));
        assert_ne!(
            both.version, one.version,
            "the pool's changes with its types"
        );
        let mut swapped = two.clone();
        swapped.types.reverse();
        assert_eq!(PoolLaunch::of(&swapped, None).version, both.version);
        let mut reimaged = two.clone();
        reimaged.image = Some(ImageRef::Id("ami-2".into()));
        let new = PoolLaunch::of(&reimaged, None);
        assert!(!new.is_current(&micro, one.version_of(&micro)));
        assert!(
            new.is_current(&micro, None),
            "a node of no version is current"
        );
    }

    #[test]
    fn budgets_round_surge_up_and_unavailability_down() {
        let r = Rollout::default();
        let b = |surge, unavailable| Budgets { surge, unavailable };
        assert_eq!(r.budgets(1), b(1, 0));
        assert_eq!(r.budgets(10), b(3, 0));
        assert_eq!(r.budgets(0), b(0, 0));
        let r = Rollout {
            max_surge: NodeBudget::Count(0),
            max_unavailable: NodeBudget::Percent(10),
            max_failures: 3,
        };
        assert_eq!(r.budgets(25), b(0, 2));
        assert_eq!(r.budgets(5), b(0, 1), "never both zero");
        assert_eq!(r.budgets(5).within(0, 5), b(0, 1));
        assert_eq!(
            Rollout::default().budgets(10).within(0, 10),
            b(0, 1),
            "no room to surge: in place"
        );
        assert_eq!(Rollout::default().budgets(10).within(2, 10), b(2, 0));
    }

    #[test]
    fn whole_numbers_may_be_written_as_floats_as_json_schema_allows() {
        let w: RolloutSettings = serde_json::from_value(serde_json::json!({
            "max_surge": 2.0, "max_failures": 5.0
        }))
        .unwrap();
        assert_eq!(w.max_surge, Some(WrittenBudget::Count(Whole(2))));
        assert_eq!(w.max_failures, Some(Whole(5)));
        for bad in [
            serde_json::json!(2.5),
            serde_json::json!(-1),
            serde_json::json!(1e12),
        ] {
            assert!(
                serde_json::from_value::<Whole>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn settings_are_checked_and_round_trip() {
        let w: RolloutSettings = serde_json::from_value(serde_json::json!({
            "max_surge": "50%", "max_unavailable": 1, "max_failures": 5
        }))
        .unwrap();
        let r = Rollout::parse(Some(&w)).unwrap();
        assert_eq!(r.max_surge, NodeBudget::Percent(50));
        assert_eq!(r.written(), Some(w));
        assert_eq!(Rollout::default().written(), None);

        let bad: RolloutSettings = serde_json::from_value(serde_json::json!({
            "max_surge": "150%", "max_unavailable": "x", "max_failures": 0
        }))
        .unwrap();
        let pointers: Vec<String> = Rollout::parse(Some(&bad))
            .unwrap_err()
            .into_iter()
            .map(|p| p.pointer)
            .collect();
        assert_eq!(
            pointers,
            [
                "/rollout/max_surge",
                "/rollout/max_unavailable",
                "/rollout/max_failures"
            ]
        );
        let stuck: RolloutSettings =
            serde_json::from_value(serde_json::json!({"max_surge": 0})).unwrap();
        assert_eq!(
            Rollout::parse(Some(&stuck)).unwrap_err()[0].pointer,
            "/rollout"
        );
    }
}
