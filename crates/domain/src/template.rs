//! Job templates (seed 000's TEST and RELEASE): a job's fields written once
//! in the server's config (`[jobs.templates.NAME]`), with placeholders
//! filled in for each run: `{{cluster}}`, `{{version}}`, `{{address}}` (the
//! cluster's first node's address, empty if it has none) anywhere. A run
//! is a job whose `cluster` is the template's, so `{{cluster_token}}`, in
//! `secrets` only (so it is never shown), becomes a token for it when each
//! attempt starts (see [`crate::JobDocument::cluster`]).

use serde_json::Value;

use crate::job::{JobDefaults, JobDocument};
use crate::names::ClusterName;
use crate::pool::{pointer, Problem};

/// The placeholders a template may use anywhere.
const PLACEHOLDERS: [&str; 3] = ["cluster", "version", "address"];
/// The placeholder for a cluster token, in `secrets` only.
const TOKEN: &str = "cluster_token";
/// The longest version accepted.
pub const MAX_VERSION: usize = 128;

/// A template as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct JobTemplate {
    name: String,
    fields: serde_json::Map<String, Value>,
}

/// What a run of a template fills in.
#[derive(Debug, Clone, Copy)]
pub struct TemplateArgs<'a> {
    pub cluster: &'a ClusterName,
    /// Checked with [`check_version`].
    pub version: &'a str,
    pub address: &'a str,
}

/// Refused unless `version` is a version a script may be handed as it is:
/// a branch, tag or commit (letters, digits, `.`, `_`, `-`, `/`, `+`).
pub fn check_version(version: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._-/+".contains(c);
    if version.is_empty() || version.len() > MAX_VERSION {
        return Err(format!(
            "a version is 1 to {MAX_VERSION} characters, got {}",
            version.len()
        ));
    }
    if version.starts_with(['-', '/', '.']) || !version.chars().all(ok_char) {
        return Err(format!(
            "{version:?} is not a version: use a branch, tag or commit (letters, digits, . _ - / +, not starting with - / or .)"
        ));
    }
    Ok(())
}

/// Each `{{NAME}}` in `text`, or why it is not closed.
fn placeholders(text: &str) -> Result<Vec<&str>, String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!("{{{{ without }}}} in {text:?}"));
        };
        found.push(after[..end].trim());
        rest = &after[end + 2..];
    }
    Ok(found)
}

/// Every string in `value`, with its pointer.
fn strings<'a>(value: &'a Value, at: &mut Vec<String>, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::String(s) => {
            let tokens: Vec<&str> = at.iter().map(String::as_str).collect();
            out.push((pointer(&tokens), s));
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                at.push(i.to_string());
                strings(v, at, out);
                at.pop();
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                at.push(k.clone());
                strings(v, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

/// `value` with every placeholder replaced.
fn fill(value: &Value, args: &TemplateArgs<'_>) -> Value {
    match value {
        Value::String(s) => {
            let mut out = s.clone();
            for (name, with) in [
                ("cluster", args.cluster.as_str()),
                ("version", args.version),
                ("address", args.address),
            ] {
                out = out.replace(&format!("{{{{{name}}}}}"), with);
            }
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| fill(v, args)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill(v, args)))
                .collect(),
        ),
        other => other.clone(),
    }
}

impl JobTemplate {
    /// Template `name` of these `fields` (a job's, `name` optional), if
    /// its placeholders are known and a run of it makes a valid job
    /// under `defaults`; else every problem.
    pub fn new(name: &str, fields: Value, defaults: &JobDefaults) -> Result<Self, Vec<Problem>> {
        let Value::Object(mut fields) = fields else {
            return Err(vec![Problem::new(
                String::new(),
                "a template is a table of a job's fields",
            )]);
        };
        fields
            .entry("name")
            .or_insert_with(|| Value::String(format!("{name}-{{{{cluster}}}}")));
        let mut problems = Vec::new();
        let whole = Value::Object(fields.clone());
        let mut found = Vec::new();
        strings(&whole, &mut Vec::new(), &mut found);
        for (at, text) in found {
            match placeholders(text) {
                Err(why) => problems.push(Problem::new(at, why)),
                Ok(names) => {
                    for p in names {
                        if p == TOKEN && !at.starts_with("/secrets/") {
                            problems.push(Problem::new(
                                at.clone(),
                                "{{cluster_token}} goes in secrets only, so it is never shown",
                            ));
                        } else if p != TOKEN && !PLACEHOLDERS.contains(&p) {
                            problems.push(Problem::new(
                                at.clone(),
                                format!(
                                    "{{{{{p}}}}} is not a placeholder; use {{{{cluster}}}}, {{{{version}}}}, {{{{address}}}} or (in secrets) {{{{cluster_token}}}}"
                                ),
                            ));
                        }
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let template = Self {
            name: name.to_owned(),
            fields,
        };
        // A run with the longest cluster name makes a valid job.
        let cluster = ClusterName::new("a".repeat(ClusterName::MAX_LEN)).expect("a valid name");
        template.instantiate(
            &TemplateArgs {
                cluster: &cluster,
                version: "v1.0.0",
                address: "10.0.0.1:8000",
            },
            defaults,
        )?;
        Ok(template)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The job a run makes, checked under `defaults`.
    pub fn instantiate(
        &self,
        args: &TemplateArgs<'_>,
        defaults: &JobDefaults,
    ) -> Result<JobDocument, Vec<Problem>> {
        check_version(args.version).map_err(|why| vec![Problem::new("/version", why)])?;
        let mut filled = fill(&Value::Object(self.fields.clone()), args);
        filled["cluster"] = Value::String(args.cluster.to_string());
        let document: JobDocument = serde_json::from_value(filled)
            .map_err(|e| vec![Problem::new(String::new(), e.to_string())])?;
        document.spec(defaults)?;
        Ok(document)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(fields: Value) -> Result<JobTemplate, Vec<String>> {
        JobTemplate::new("test", fields, &JobDefaults::default())
            .map_err(|ps| ps.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_run_fills_in_the_cluster_the_version_and_the_token() {
        let t = template(serde_json::json!({
            "repo": "https://example.com/r.git",
            "ref": "{{version}}",
            "script": "make test CLUSTER={{cluster}} ADDRESS={{address}}",
            "max_runtime": "1h",
            "env": {"VERSION": "{{version}}"},
            "secrets": {"TOKEN": "{{cluster_token}}"},
        }))
        .unwrap();
        let cluster = ClusterName::new("demo").unwrap();
        let doc = t
            .instantiate(
                &TemplateArgs {
                    cluster: &cluster,
                    version: "release/2.1",
                    address: "127.0.0.5:8000",
                },
                &JobDefaults::default(),
            )
            .unwrap();
        assert_eq!(doc.name, "test-demo");
        assert_eq!(doc.git_ref.as_deref(), Some("release/2.1"));
        assert_eq!(doc.script, "make test CLUSTER=demo ADDRESS=127.0.0.5:8000");
        assert_eq!(doc.env["VERSION"], "release/2.1");
        assert_eq!(doc.cluster.as_deref(), Some("demo"));
        let spec = doc.spec(&JobDefaults::default()).unwrap();
        assert!(spec.wants_cluster_token());
        assert_eq!(
            spec.secrets_with_token("t0ken")["TOKEN"].expose(),
            "t0ken",
            "the token is given when an attempt starts"
        );
    }

    #[test]
    fn a_bad_template_is_refused_at_each_place() {
        let problems = template(serde_json::json!({
            "script": "echo {{cluster_token}} {{nope}}",
            "max_runtime": "1h",
        }))
        .unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("/script") && problems[0].contains("secrets only"));
        assert!(problems[1].contains("{{nope}} is not a placeholder"));
        let problems = template(serde_json::json!({"script": "true"})).unwrap_err();
        assert!(problems[0].contains("/max_runtime"), "{problems:?}");
    }

    #[test]
    fn a_version_cannot_carry_shell() {
        for bad in ["", "$(rm -rf /)", "a b", "-rf", "x;y", &"v".repeat(129)] {
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
        for good in ["main", "v1.2.3", "release/2.1", "0a1b2c3d", "1.0+build_7"] {
            assert!(check_version(good).is_ok(), "{good:?}");
        }
    }
}
