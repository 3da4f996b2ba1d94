//! The `ec2` driver: instances on AWS EC2 through the official AWS SDK.
//!
//! Invariants:
//! - every instance (and its volumes) carries the ownership tags from the
//!   RunInstances call that made it (TagSpecifications), never later;
//! - the set lists, terminates and retags only instances tagged
//!   `flotilla-instance-set` = its ID: listings filter on the tag and check
//!   it again, and destroy and set_tags look the instance up first and
//!   refuse another set's;
//! - `shutting-down` and `terminated` instances are gone: never listed, and
//!   destroying one is success;
//! - probes make no EC2 call: they read the state the last listing saw;
//! - a pool's `[pools.NAME.ec2]` ([`Ec2PoolOptions`], kept in
//!   [`Ec2Config::pools`]) replaces the driver's launch settings for that
//!   pool's instances; the pool is known from the create request and, for a
//!   probe, from the instance's `flotilla-pool` tag.
//!
//! Errors are classified by EC2's error codes ([`classify`]); a rate limit
//! comes with a back-off of 1 s doubling to 60 s, reset by any call that
//! succeeds. The SDK's own retries are off: the engine retries, and the
//! throttle in front of every driver must see a rate limit at once.

mod config;
mod errors;
mod prices;
mod probe;
mod set;
pub mod user_data;

pub use config::{
    AddressKind, Ec2Config, Ec2Image, Ec2Images, Ec2PoolOptions, HealthCheck, LaunchSettings,
    SpotConfig, IMAGE_PATTERN,
};
pub use errors::{classify, ErrorClass, BACKOFF_MAX, BACKOFF_START};
pub use flotilla_cloud::{InstanceShape, SpotPrice};
pub use set::{load_sdk_config, Ec2InstanceSet};

/// Re-exported so callers can pass explicit credentials without depending on
/// the SDK themselves.
pub use aws_sdk_ec2::config::{Credentials, SharedCredentialsProvider};

use flotilla_cloud::CloudError;

/// Why the driver could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    #[error("invalid ec2 driver configuration: {reason}")]
    InvalidConfig { reason: String },
    #[error("invalid ec2 pool options: {reason}")]
    InvalidPoolOptions { reason: String },
    #[error("the ec2 driver cannot use EC2: {0}")]
    Cloud(CloudError),
    #[error("no AWS credentials found: the AWS credential chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE and ~/.aws, a web identity token, or a container or instance role) gave none; set one and start again ({reason})")]
    NoCredentials { reason: String },
}
