//! What a pool may say, driver by driver: each configured driver's JSON
//! Schema for its pools and its own checks, and the one check every pool
//! passes before it is used or stored, written in the config file or
//! through the API alike.

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_domain::{
    pool_schema, schema_of, PoolDocument, PoolName, PoolSource, PoolSpec, Problem, SharedImages,
};
use serde_json::Value;

/// What one configured driver says of the pools on it.
pub trait PoolDriver: Send + Sync {
    /// The driver's type as configured (`local`, `fake`, `ec2`).
    fn kind(&self) -> &'static str;
    /// The section of a pool this driver reads (its key, such as `ec2`,
    /// and its JSON Schema), if it reads one.
    fn section(&self) -> Option<(&'static str, Value)>;
    /// Everything the driver finds wrong with pool `name` on it (a pool
    /// that passed its schema), each at its JSON pointer.
    fn check(&self, name: &PoolName, spec: &PoolSpec) -> Vec<Problem>;
    /// The kinds of shared config it publishes a schema for, by name. By
    /// default `images`: one image, or one per key.
    fn shared_kinds(&self) -> Vec<(&'static str, Value)> {
        vec![("images", part_schema(schema_of::<SharedImages>()))]
    }
}

/// A generated schema as a part of another document (no `$schema`).
pub fn part_schema(mut schema: Value) -> Value {
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
    }
    schema
}

/// A driver of type `.0` that reads no section of a pool and checks
/// nothing beyond the schema (as `local` and `fake`).
pub struct NoSection(pub &'static str);

impl PoolDriver for NoSection {
    fn kind(&self) -> &'static str {
        self.0
    }
    fn section(&self) -> Option<(&'static str, Value)> {
        None
    }
    fn check(&self, _: &PoolName, _: &PoolSpec) -> Vec<Problem> {
        Vec::new()
    }
}

/// The sections of a pool some driver reads; a pool may carry only its
/// own driver's.
const SECTIONS: [&str; 1] = ["ec2"];

struct Entry {
    driver: Arc<dyn PoolDriver>,
    schema: Value,
    validator: jsonschema::Validator,
    /// The key of the section of a pool it reads, if any.
    section: Option<&'static str>,
    /// Its shared configs' kinds: each schema, as published.
    shared: BTreeMap<&'static str, Value>,
}

/// The configured drivers' schemas, compiled once.
pub struct PoolCatalog {
    drivers: BTreeMap<String, Entry>,
}

impl std::fmt::Debug for PoolCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.drivers.iter().map(|(n, e)| (n, e.driver.kind())))
            .finish()
    }
}

impl PoolCatalog {
    /// The catalogue of `drivers`, by their configured names.
    pub fn new(drivers: BTreeMap<String, Arc<dyn PoolDriver>>) -> Self {
        let drivers = drivers
            .into_iter()
            .map(|(name, driver)| {
                let section = driver.section();
                let section_key = section.as_ref().map(|(key, _)| *key);
                let schema = pool_schema(&name, section);
                let validator = jsonschema::validator_for(&schema)
                    .expect("a schema generated from a Rust type is valid");
                let shared = driver
                    .shared_kinds()
                    .into_iter()
                    .map(|(kind, schema)| {
                        let mut schema = schema;
                        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema".into();
                        schema["$id"] = format!("urn:flotilla:schema:shared:{name}:{kind}").into();
                        (kind, schema)
                    })
                    .collect();
                (
                    name,
                    Entry {
                        driver,
                        schema,
                        validator,
                        section: section_key,
                        shared,
                    },
                )
            })
            .collect();
        Self { drivers }
    }

    /// A catalogue of drivers that read no section of a pool and check
    /// nothing beyond the schema: `(name, type)` each (`local` and `fake`
    /// drivers are such).
    pub fn plain<'a>(drivers: impl IntoIterator<Item = (&'a str, &'static str)>) -> Self {
        Self::new(
            drivers
                .into_iter()
                .map(|(name, kind)| {
                    (
                        name.to_owned(),
                        Arc::new(NoSection(kind)) as Arc<dyn PoolDriver>,
                    )
                })
                .collect(),
        )
    }

    /// Every configured driver: its name and type.
    pub fn drivers(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.drivers
            .iter()
            .map(|(name, e)| (name.as_str(), e.driver.kind()))
    }

    /// The JSON Schema of a pool on driver `driver`.
    pub fn schema(&self, driver: &str) -> Option<&Value> {
        self.drivers.get(driver).map(|e| &e.schema)
    }

    /// The kinds of shared config driver `driver` publishes.
    pub fn shared_kinds(&self, driver: &str) -> Vec<&'static str> {
        self.drivers
            .get(driver)
            .map(|e| e.shared.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The JSON Schema of a shared config of `kind` on driver `driver`.
    pub fn shared_schema(&self, driver: &str, kind: &str) -> Option<&Value> {
        self.drivers.get(driver)?.shared.get(kind)
    }

    /// The type of driver `driver` (`ec2`), if it is configured.
    pub fn kind_of(&self, driver: &str) -> Option<&'static str> {
        self.drivers.get(driver).map(|e| e.driver.kind())
    }

    /// Checks a shared config's `value` against `schema` (a published
    /// schema, or the one the config was created with): every problem, each
    /// at its JSON pointer.
    pub fn check_shared(schema: &Value, value: &Value) -> Vec<Problem> {
        match jsonschema::validator_for(schema) {
            Ok(validator) => validator
                .iter_errors(value)
                .map(|e| Problem::new(e.instance_path().as_str(), e.to_string()))
                .collect(),
            Err(e) => vec![Problem::new("", format!("its schema is not usable: {e}"))],
        }
    }

    /// Checks pool `name` as written (`document`): its driver's schema,
    /// then what a schema cannot say, then the driver's own checks. Every
    /// problem found at the stage that found any, each at its JSON
    /// pointer; or what the document means.
    pub fn check(
        &self,
        name: &PoolName,
        document: &Value,
        source: PoolSource,
    ) -> Result<(PoolDocument, PoolSpec), Vec<Problem>> {
        let Some(object) = document.as_object() else {
            return Err(vec![Problem::new(
                "",
                "a pool is a table (a JSON object) with at least driver and instance_type (or instance_types)",
            )]);
        };
        let entry = match object.get("driver") {
            None => {
                return Err(vec![Problem::at(
                    "driver",
                    "missing: name the driver that makes the pool's nodes",
                )])
            }
            Some(Value::String(driver)) => match self.drivers.get(driver) {
                Some(entry) => entry,
                None => {
                    return Err(vec![Problem::at(
                        "driver",
                        format!(
                            "no driver named {driver:?} (configured: {})",
                            self.drivers.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    )])
                }
            },
            Some(other) => {
                return Err(vec![Problem::at(
                    "driver",
                    format!("{other} is not a driver's name (a string)"),
                )])
            }
        };
        let own = entry.section;
        let mut problems: Vec<Problem> = SECTIONS
            .into_iter()
            .filter(|key| object.contains_key(*key) && own != Some(*key))
            .map(|key| {
                Problem::at(
                    key,
                    format!(
                        "pool {name} launches on driver {:?} of type {}; the {key} section applies \
                         only to pools on an {key} driver",
                        object["driver"].as_str().unwrap_or_default(),
                        entry.driver.kind()
                    ),
                )
            })
            .collect();
        let checked;
        let document = if problems.is_empty() {
            document
        } else {
            // Checked without them, so the schema does not report them again.
            let mut rest = object.clone();
            for p in &problems {
                rest.remove(p.pointer.trim_start_matches('/'));
            }
            checked = Value::Object(rest);
            &checked
        };
        for e in entry.validator.iter_errors(document) {
            said(&e, &mut problems);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let parsed: PoolDocument = serde_json::from_value(document.clone())
            .map_err(|e| vec![Problem::new("", e.to_string())])?;
        let spec = parsed.spec(source)?;
        let problems = entry.driver.check(name, &spec);
        if problems.is_empty() {
            Ok((parsed, spec))
        } else {
            Err(problems)
        }
    }
}

/// `e` as problems a pool's author can act on.
fn said(e: &jsonschema::ValidationError<'_>, problems: &mut Vec<Problem>) {
    use jsonschema::error::ValidationErrorKind as Kind;
    let at = e.instance_path().as_str().to_owned();
    match e.kind() {
        // Named at the key itself, one problem each.
        Kind::AdditionalProperties { unexpected } => {
            for key in unexpected {
                problems.push(Problem::new(
                    format!("{at}{}", flotilla_domain::pointer(&[key])),
                    "unknown field; see the driver's schema for the fields a pool may have",
                ));
            }
        }
        // The document's one oneOf: instance_type or instance_types.
        Kind::OneOfNotValid { .. } if at.is_empty() => problems.push(Problem::no_type_key()),
        Kind::OneOfMultipleValid { .. } if at.is_empty() => {
            problems.push(Problem::both_type_keys())
        }
        // A value of one of several forms (an instance type's name or
        // table, an amount as a string or a number): what is wrong with
        // it in the one form of its kind, if one only is.
        Kind::AnyOf { context } => {
            let of_its_kind: Vec<&Vec<jsonschema::ValidationError<'static>>> = context
                .iter()
                .filter(|branch| {
                    !branch.iter().any(|b| {
                        matches!(b.kind(), Kind::Type { .. })
                            && b.instance_path() == e.instance_path()
                    })
                })
                .collect();
            match of_its_kind.as_slice() {
                [branch] if !branch.is_empty() => {
                    for b in branch.iter() {
                        said(b, problems);
                    }
                }
                _ => problems.push(Problem::new(at, e.to_string())),
            }
        }
        _ => problems.push(Problem::new(at, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Plain;
    impl PoolDriver for Plain {
        fn kind(&self) -> &'static str {
            "local"
        }
        fn section(&self) -> Option<(&'static str, Value)> {
            None
        }
        fn check(&self, _: &PoolName, spec: &PoolSpec) -> Vec<Problem> {
            if spec.offers(&flotilla_domain::InstanceType::new("huge").unwrap()) {
                vec![Problem::at("instance_type", "not offered")]
            } else {
                Vec::new()
            }
        }
    }

    struct WithSection;
    impl PoolDriver for WithSection {
        fn kind(&self) -> &'static str {
            "ec2"
        }
        fn section(&self) -> Option<(&'static str, Value)> {
            Some((
                "ec2",
                json!({"type": "object", "properties": {"subnets": {"type": "array", "items": {"type": "string"}}}, "additionalProperties": false}),
            ))
        }
        fn check(&self, _: &PoolName, _: &PoolSpec) -> Vec<Problem> {
            Vec::new()
        }
    }

    fn catalog() -> PoolCatalog {
        PoolCatalog::new(BTreeMap::from([
            ("here".to_owned(), Arc::new(Plain) as Arc<dyn PoolDriver>),
            (
                "aws".to_owned(),
                Arc::new(WithSection) as Arc<dyn PoolDriver>,
            ),
        ]))
    }

    fn problems(doc: Value) -> Vec<String> {
        catalog()
            .check(&PoolName::new("p").unwrap(), &doc, PoolSource::Config)
            .unwrap_err()
            .into_iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn a_good_pool_means_its_spec() {
        let (doc, spec) = catalog()
            .check(
                &PoolName::new("p").unwrap(),
                &json!({"driver": "aws", "instance_type": "t3.micro", "ec2": {"subnets": ["s-1"]}}),
                PoolSource::Config,
            )
            .unwrap();
        assert_eq!(doc.driver, "aws");
        assert_eq!(spec.options, Some(json!({"subnets": ["s-1"]})));
    }

    #[test]
    fn every_schema_problem_is_reported_at_once_with_its_pointer() {
        let p = problems(json!({
            "driver": "here", "instance_type": "a b", "allow_exec": "yes", "colour": "red"
        }));
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p.iter().any(|p| p.starts_with("/instance_type: ")), "{p:?}");
        assert!(p.iter().any(|p| p.starts_with("/allow_exec: ")), "{p:?}");
        assert!(
            p.iter().any(|p| p.starts_with("/colour: unknown field")),
            "{p:?}"
        );
        let p = problems(json!({"driver": "aws", "instance_type": "x", "ec2": {"subnets": [1]}}));
        assert!(p[0].starts_with("/ec2/subnets/0: "), "{p:?}");
    }

    #[test]
    fn the_driver_is_checked_first_and_named() {
        let p = problems(json!({"driver": "nowhere", "instance_type": "x"}));
        assert!(
            p[0].starts_with("/driver: ") && p[0].contains("aws, here"),
            "{p:?}"
        );
        assert!(problems(json!({"instance_type": "x"}))[0].starts_with("/driver: "));
        assert!(problems(json!(["driver"]))[0].contains("JSON object"));
    }

    #[test]
    fn another_drivers_section_is_refused_by_name() {
        let p = problems(json!({"driver": "here", "instance_type": "x", "ec2": {}}));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("/ec2: ") && p[0].contains("of type local"),
            "{p:?}"
        );
    }

    #[test]
    fn prices_are_whole_micro_dollars_as_text_or_number() {
        let check = |price: Value| {
            catalog().check(
                &PoolName::new("p").unwrap(),
                &json!({"driver": "here", "instance_type": "x", "price_per_hour": price}),
                PoolSource::Config,
            )
        };
        for good in [
            json!("0.10"),
            json!("12"),
            json!(0.1),
            json!(0.25),
            json!(3),
            json!(0.000001),
        ] {
            let spec = check(good.clone())
                .unwrap_or_else(|p| panic!("{good}: {p:?}"))
                .1;
            assert!(
                spec.types[0].price_per_hour > flotilla_domain::Money::ZERO,
                "{good}"
            );
        }
        for bad in [
            json!("-0.10"),
            json!("ten"),
            json!("0.0000001"),
            json!(-1),
            json!(0.0000001),
        ] {
            let p = check(bad.clone()).unwrap_err();
            assert_eq!(p[0].pointer, "/price_per_hour", "{bad}: {p:?}");
        }
    }

    #[test]
    fn owners_and_tags_follow_their_rules_in_the_schema() {
        let p = problems(json!({"driver": "here", "instance_type": "x",
            "owners": ["ann", "ann", "org:a b"], "tags": {"flotilla-pool": "x"}}));
        assert!(p.iter().any(|p| p.starts_with("/owners: ")), "{p:?}");
        assert!(p.iter().any(|p| p.starts_with("/owners/2: ")), "{p:?}");
        assert!(p.iter().any(|p| p.starts_with("/tags")), "{p:?}");
    }

    #[test]
    fn the_domain_and_the_driver_check_what_a_schema_cannot() {
        let p = problems(json!({"driver": "here", "instance_type": "huge"}));
        assert_eq!(p, ["/instance_type: not offered"]);
    }

    #[test]
    fn instance_types_are_checked_each_at_its_pointer_in_the_form_it_is_written() {
        let p = problems(json!({"driver": "here", "instance_types": [
            "ok.one", "t3 nano", {"name": "ok.two", "price": 1}, {"name": "ok.three", "price_per_hour": "-1"}
        ]}));
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p[0].starts_with("/instance_types/1: \"t3 nano\" does not match"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("/instance_types/2/price: unknown field"),
            "{p:?}"
        );
        assert!(
            p[2].starts_with("/instance_types/3/price_per_hour: \"-1\" does not match"),
            "{p:?}"
        );
        let p = problems(json!({"driver": "here"}));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("/instance_type: missing"), "{p:?}");
        let p = problems(json!({"driver": "here", "instance_type": "a", "instance_types": ["b"]}));
        assert!(
            p[0].starts_with("/instance_types: write instance_type"),
            "{p:?}"
        );
        let p = problems(json!({"driver": "here", "instance_types": ["a", "huge"]}));
        assert_eq!(p, ["/instance_type: not offered"]);
    }
}
