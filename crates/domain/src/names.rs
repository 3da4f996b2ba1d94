use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value:?} is not valid: {rule}")]
pub struct NameError {
    pub kind: NameKind,
    pub value: String,
    pub rule: &'static str,
}

/// What a refused name was meant to name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameKind {
    Cluster,
    Username,
    Pool,
    SharedConfig,
    InstanceSetId,
    InstanceType,
}

impl NameKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NameKind::Cluster => "cluster name",
            NameKind::Username => "username",
            NameKind::Pool => "pool name",
            NameKind::SharedConfig => "shared config name",
            NameKind::InstanceSetId => "instance set id",
            NameKind::InstanceType => "instance type",
        }
    }
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_name(value: &str, max_len: usize, extra: &[u8]) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max_len
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || extra.contains(b))
}

macro_rules! validated_name {
    ($(#[$doc:meta])* $name:ident, $kind:expr, $max:expr, $extra:expr, $rule:literal, $pattern:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The rule [`Self::new`] checks, as a regular expression (for
            /// the API document).
            pub const PATTERN: &'static str = $pattern;
            pub const MAX_LEN: usize = $max;

            pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
                let value = value.into();
                if is_name(&value, $max, $extra) {
                    Ok(Self(value))
                } else {
                    Err(NameError { kind: $kind, value, rule: $rule })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

validated_name!(
    /// A cluster's name: `^[A-Za-z0-9][-A-Za-z0-9]{0,39}$`, so it fits in
    /// cloud tags, DNS labels and file names.
    ClusterName,
    NameKind::Cluster,
    40,
    b"",
    "use 1 to 40 letters, digits or '-', starting with a letter or digit",
    "^[A-Za-z0-9][-A-Za-z0-9]{0,39}$"
);

validated_name!(
    /// An account's name, local or GitHub. The same rule as a cluster name,
    /// because an account's own cluster is named after it.
    Username,
    NameKind::Username,
    40,
    b"",
    "use 1 to 40 letters, digits or '-', starting with a letter or digit",
    "^[A-Za-z0-9][-A-Za-z0-9]{0,39}$"
);

impl Username {
    /// The cluster named after this account: the one every account may use.
    pub fn own_cluster(&self) -> ClusterName {
        ClusterName(self.0.clone())
    }
}

validated_name!(
    /// A pool's name as written in the config file.
    PoolName,
    NameKind::Pool,
    64,
    b"_",
    "use 1 to 64 letters, digits, '-' or '_', starting with a letter or digit",
    "^[A-Za-z0-9][-_A-Za-z0-9]{0,63}$"
);

validated_name!(
    /// A shared config's name: what a pool's reference names.
    SharedConfigName,
    NameKind::SharedConfig,
    64,
    b"_",
    "use 1 to 64 letters, digits, '-' or '_', starting with a letter or digit",
    "^[A-Za-z0-9][-_A-Za-z0-9]{0,63}$"
);

validated_name!(
    /// The ownership ID of an instance set: every instance the set creates is
    /// tagged with it, and the set touches nothing without it.
    InstanceSetId,
    NameKind::InstanceSetId,
    64,
    b"_",
    "use 1 to 64 letters, digits, '-' or '_', starting with a letter or digit",
    "^[A-Za-z0-9][-_A-Za-z0-9]{0,63}$"
);

/// A cloud's own name for a kind of instance (`t3.micro`, `local.small`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceType(String);

impl InstanceType {
    pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
        let value = value.into();
        let ok = !value.is_empty()
            && value.len() <= 64
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if ok {
            Ok(Self(value))
        } else {
            Err(NameError {
                kind: NameKind::InstanceType,
                value,
                rule: "use 1 to 64 letters, digits, '-', '_' or '.'",
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The cloud's ID of one instance; stable for the instance's whole life.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(String);

impl InstanceId {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn patterns_say_what_the_constructors_check() {
        assert_eq!(ClusterName::PATTERN, "^[A-Za-z0-9][-A-Za-z0-9]{0,39}$");
        assert_eq!(ClusterName::MAX_LEN, 40);
        assert!(
            ClusterName::new("a".repeat(40)).is_ok() && ClusterName::new("a".repeat(41)).is_err()
        );
        assert!(PoolName::new(format!("a{}", "_".repeat(63))).is_ok());
        assert_eq!(PoolName::PATTERN, "^[A-Za-z0-9][-_A-Za-z0-9]{0,63}$");
    }

    use super::*;

    #[test]
    fn cluster_names_follow_the_contract() {
        for good in ["a", "demo", "Demo-1", "0abc", &"x".repeat(40)] {
            assert!(ClusterName::new(good).is_ok(), "{good} should be valid");
        }
        for bad in ["", "-a", "a_b", "a.b", "a b", "é", &"x".repeat(41), "a/b"] {
            assert!(ClusterName::new(bad).is_err(), "{bad} should be invalid");
        }
    }

    #[test]
    fn deserialising_a_name_validates_it() {
        let err = serde_json::from_str::<ClusterName>("\"-bad\"").unwrap_err();
        assert!(err.to_string().contains("cluster name"), "{err}");
    }

    #[test]
    fn instance_types_allow_dots() {
        assert!(InstanceType::new("t3.micro").is_ok());
        assert!(InstanceType::new("t3 micro").is_err());
        assert!(InstanceType::new("").is_err());
    }
}
