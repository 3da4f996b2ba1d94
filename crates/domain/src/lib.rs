//! The rules of flotilla: names, cluster lifecycle, node states and the
//! planner. Everything here is a plain function over plain data: no clock,
//! no I/O, no async. The edges (engine, store, API) call in with the current
//! time and the observed world and act on what comes back.

mod access;
mod capacity;
mod change;
mod cluster;
mod digest;
mod dropbox;
mod fit;
mod job;
mod money;
mod names;
mod notify;
mod obstacle;
mod org;
mod plan;
mod pool;
mod pool_error;
mod rollout;
mod schedule;
mod template;

pub use access::{
    allowed_clusters, authorize_admin, authorize_cluster_token, authorize_deploy,
    authorize_destroy, authorize_exec, authorize_job, authorize_job_pool, authorize_job_submit,
    authorize_pool_fields, authorize_pool_write, authorize_status, authorize_workload, AccountKind,
    Caller, Denied, Level, LevelError, LevelLimits, LevelPolicy,
};
pub use capacity::{sizing, CapacityRequest, Sizing};
pub use change::{may_read_change, org_changes, Change, ChangeEntity, ChangeKind, NewChange};
pub use cluster::{
    cluster_state, ClusterRecord, ClusterState, DeployCommand, FixedField, Limits, NodeCapacity,
    TimeToLive, ValidationError, Workload,
};
pub use digest::{hex, sha256_hex};
pub use dropbox::{
    create_ask, trigger_cluster, CreateAsk, DropboxTemplate, FileKind, Refusal, DEFAULT_TEMPLATE,
    MAX_TRIGGER_BYTES,
};
pub use fit::{
    cheapest_fit, schedule, take_warm, Decision, Fit, Market, Offer, Shape, Unfit, Waiting,
    WarmNode, IN_LINE,
};
pub use job::{
    after_attempt, is_artifact_of, job_schema, kept_path, secret_parts, warm_token_hash,
    AfterAttempt, AttemptEnd, Checkout, JobDefaults, JobDocument, JobSpec, JobState, PoolChoice,
    QueueKey, Resources, Secret, CLUSTER_TOKEN, MAX_KEPT_PATH, MAX_RETRIES, MAX_SCRIPT, REDACTED,
};
pub use money::{
    forecast_hours, lifetime_cost, month_of, monthly_credit, projected_cost, Money, MoneyError,
    MICROS_PER_DOLLAR,
};
pub use names::{
    ClusterName, InstanceId, InstanceSetId, InstanceType, NameError, NameKind, PoolName,
    SharedConfigName, Username,
};
pub use notify::{
    dedup_key, event_json, event_line, mail_text, patterns_text, retry_after, test_event, Channel,
    DeliveryState, Pattern, MAX_PATTERNS, MAX_SUBSCRIPTIONS, MAX_TARGET_LEN, TEST_KIND,
};
pub use obstacle::{Obstacle, ObstacleCode};
pub use org::{
    target_record, with_daily_spend, Accrual, Budget, CapacityOutcome, Charge, ClusterTarget,
    CostRow, Effects, JobMeter, LedgerEntry, LedgerKind, NodeEnd, NodeEndSeen, NodeMeter,
    OrgDefaults, OrgError, OrgEvent, OrgEventKind, OrgName, OrgRole, OrgSettings, Organisation,
    SettingsPatch,
};
pub use plan::{
    plan, Budgets, DestroyReason, Launches, NodeRecord, NodeState, ObservedNode, Plan, Timeouts,
    WantedNodes,
};
pub use pool::{
    image_from, pointer, pool_schema, schema_of, ImageRef, NodePrices, PoolDocument, PoolOwner,
    PoolSource, PoolSpec, PoolType, PricedType, Problem, SharedImages, WrittenDollars, WrittenType,
    POOL_SCHEMA_VERSION,
};
pub use pool_error::{PoolError, PoolErrorKey, PoolErrorKind};
pub use rollout::{
    LaunchVersion, NodeBudget, PoolLaunch, Rollout, RolloutSettings, Whole, WrittenBudget,
};
pub use schedule::{
    check_schedule_name, CronTimes, Fired, Firing, Missed, Schedule, MAX_SCHEDULE_NAME, ON_TIME,
};
pub use template::{check_version, JobTemplate, TemplateArgs, MAX_VERSION};
