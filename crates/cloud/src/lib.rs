//! The cloud driver contract (after Arvados' `lib/cloud`): a driver gives
//! an [`InstanceSet`] owned by one [`InstanceSetId`]; the set creates, lists,
//! destroys and tags only instances that carry that ID. Errors are
//! classified so the engine can react to rate limits, quotas and capacity
//! shortages without parsing strings.
//!
//! Cross-cutting behaviour wraps a driver as a decorator ([`Throttled`],
//! [`Metered`]) so drivers stay thin. [`fake`] is an in-memory cloud with
//! fault knobs, and [`conformance`] is the suite every driver must pass.

pub mod clock;
pub mod conformance;
mod contract;
pub mod fake;
mod metered;
mod throttle;

pub use clock::{Clock, SystemClock, TokioClock};
pub use contract::{
    check_tag_update, is_local_failure, matches_filter, ownership_tags, CapacityScope, CloudError,
    Console, CreateRequest, ExecOutput, Health, Instance, InstanceSet, InstanceShape, Offering,
    SpotPrice, Tags, TAG_CLUSTER, TAG_INSTANCE_SET, TAG_INSTANCE_TYPE, TAG_JOB, TAG_POOL,
    TAG_POOL_VERSION, TAG_WARM,
};
pub use metered::{CloudMetrics, Metered};
pub use throttle::Throttled;
