//! The job runner (issue 13), run by the leader: each pass reads the jobs
//! not ended, looks after every attempt under way (its instance made or
//! adopted from the cloud's listing; ended when cancelled, past its
//! `max_runtime`, never booted, or silent past the heartbeat timeout),
//! destroys the instances of attempts no longer under way, and starts the
//! queued jobs the scheduler ([`flotilla_domain::schedule`]) finds an
//! instance for, in queue order.
//!
//! Every attempt has an instance of its own, tagged with the job and the
//! attempt ([`TAG_JOB`]) besides the ownership tags, so a new leader finds
//! it in the listing and nothing else touches it: a cluster's reconcile
//! never sees it ([`crate::inventory::SetInventory::jobs`]). Each step is
//! written under the lease and checked against the job's version, so an
//! attempt is started once and a job cancelled runs nothing more.
//!
//! The agent on the instance reports through the API (its script runs,
//! its output, heartbeats, its exit); those steps need no lease.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use flotilla_cloud::{CloudError, CreateRequest, Instance, Tags, TAG_JOB, TAG_WARM};
use flotilla_domain::{
    after_attempt, schedule, take_warm, warm_token_hash, AttemptEnd, ClusterName, Decision,
    InstanceId, JobDefaults, JobDocument, JobMeter, JobSpec, JobState, Money, NodeMeter, Offer,
    PoolName, Shape, Username, Waiting, WarmNode,
};
use flotilla_store::{AttemptRecord, Fence, JobId, JobRecord, JobStep, NewAttempt, StoreError};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::Shared;

/// How often the runner looks at every job when nothing woke it.
const PASS: Duration = Duration::from_secs(1);
/// How long a destroy asked of an instance is left to act before it is
/// asked again.
const DESTROY_AGAIN: Duration = Duration::from_secs(30);
/// How long a pool whose instance kept warm could not be made waits
/// before the next is tried.
const WARM_AGAIN: Duration = Duration::from_secs(30);

/// How jobs are run.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSettings {
    /// What a job that says nothing gets, and how far it may go.
    pub defaults: JobDefaults,
    /// An attempt whose agent has not reported for this long is lost.
    pub heartbeat_timeout: Duration,
    /// An attempt whose script has not started this long after its start
    /// never booted.
    pub boot_timeout: Duration,
    /// Instances of job attempts at once, over every pool.
    pub max_instances: usize,
    /// A job that asked for spot and has waited this long (since it was
    /// submitted or its last attempt ended) is bought on demand.
    pub spot_wait: Duration,
    /// An instance kept warm for jobs (a pool's `idle_nodes`) that no job
    /// took for this long is replaced.
    pub warm_max_idle: Duration,
    /// The job templates of the server's config (TEST, RELEASE, what
    /// schedules run), by name.
    pub templates: BTreeMap<String, flotilla_domain::JobTemplate>,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            defaults: JobDefaults {
                max_runtime: Some(Duration::from_secs(3600)),
                ..JobDefaults::default()
            },
            heartbeat_timeout: Duration::from_secs(30),
            boot_timeout: Duration::from_secs(600),
            max_instances: 50,
            spot_wait: Duration::from_secs(600),
            warm_max_idle: Duration::from_secs(3600),
            templates: BTreeMap::new(),
        }
    }
}

/// How an attempt's instance starts its agent: what the instance is
/// handed at boot (on `local`, the command its node runs; on EC2, user
/// data). The binary provides it: it knows where the server is reached
/// and where the agent comes from.
pub trait AttemptBoot: Send + Sync {
    /// Why the instances of `driver` cannot start an agent, if they
    /// cannot (the scheduler offers their pools to no job, which says why
    /// it waits).
    fn refuses(&self, driver: &str) -> Option<String> {
        let _ = driver;
        None
    }

    /// The init data of an attempt's instance, or why the driver's
    /// instances cannot start an agent.
    fn init_data(&self, start: &AttemptStart<'_>) -> Result<String, String>;

    /// The init data of an instance kept warm for jobs: its agent asks the
    /// server for a job with `start.token` until one takes the instance
    /// (`GET /api/v1/warm`), then runs it. Or why the driver's instances
    /// cannot be kept warm.
    fn warm_init_data(&self, start: &WarmStart<'_>) -> Result<String, String> {
        Err(format!(
            "instances of driver {} cannot be kept warm for jobs",
            start.driver
        ))
    }
}

/// What an instance kept warm for jobs is started for.
#[derive(Debug, Clone, Copy)]
pub struct WarmStart<'a> {
    /// The driver of the pool it is made from.
    pub driver: &'a str,
    /// What its agent presents to ask for a job; the instance's tag
    /// carries its hash ([`flotilla_cloud::TAG_WARM`]).
    pub token: &'a str,
    /// How long it may live idle at most: its boot, `warm_max_idle` and
    /// a margin. Once a job takes it, the job's [`attempt_lifetime`] from
    /// then instead.
    pub lifetime: Duration,
}

/// What an attempt's instance is started for.
#[derive(Debug, Clone, Copy)]
pub struct AttemptStart<'a> {
    /// The driver of the pool it is made from.
    pub driver: &'a str,
    pub job: JobId,
    pub attempt: u32,
    /// What its agent presents.
    pub token: &'a str,
    /// How long the instance may live at most: its boot, the job's
    /// `max_runtime` and `keep_on_failure`, and a margin. Past it the
    /// instance ends itself where the driver can make it (on EC2, a
    /// shutdown timer), whatever becomes of flotilla.
    pub lifetime: Duration,
}

/// What an instance's lifetime allows beyond its boot, run and time kept
/// for debugging, so the runner always ends it first.
const LIFETIME_MARGIN: Duration = Duration::from_secs(10 * 60);

/// How long an attempt's instance may live from the attempt's start, at
/// most: the boot timeout, the job's `max_runtime` and `keep_on_failure`,
/// and a margin (the runner ends it first).
pub fn attempt_lifetime(settings: &JobSettings, spec: &JobSpec) -> Duration {
    settings.boot_timeout
        + spec.max_runtime
        + spec.keep_on_failure.unwrap_or_default()
        + LIFETIME_MARGIN
}

/// The runner's state on this server.
#[derive(Default)]
pub(crate) struct JobRunner {
    boot: OnceLock<Arc<dyn AttemptBoot>>,
    /// Woken by every job's change the reflector reads.
    pub changed: Notify,
    /// Woken by every schedule's change the reflector reads.
    pub schedules_changed: Notify,
    /// When each instance was last asked to go.
    destroying: Mutex<HashMap<InstanceId, Instant>>,
    /// When this server's current term as leader began: no agent could be
    /// heard before it (its reports may have gone to a server that was
    /// down), so silence is counted from no earlier.
    term_began: Mutex<Option<DateTime<Utc>>>,
    /// What each job not ended means, read once from its document (which
    /// never changes) rather than on every pass.
    specs: Mutex<HashMap<JobId, Arc<JobSpec>>>,
    /// The job instances whose meters were last moved this term; none
    /// before the first time.
    metered: Mutex<Option<BTreeSet<InstanceId>>>,
    /// The instances of attempts under way that the inventory lacks, with
    /// its driver's listing count when that was first seen.
    missing: Mutex<HashMap<InstanceId, u64>>,
    /// The instances kept warm that a job took, or that gave way to jobs
    /// waiting for an instance: never offered again (even by a listing
    /// older than a new tag), and destroyed unless an attempt under way
    /// runs on them.
    warm_spent: Mutex<BTreeSet<InstanceId>>,
    /// Pools whose last instance kept warm could not be made, until when
    /// none is tried again.
    warm_failed: Mutex<HashMap<PoolName, Instant>>,
}

impl JobRunner {
    pub fn set_boot(&self, boot: Arc<dyn AttemptBoot>) -> bool {
        self.boot.set(boot).is_ok()
    }
}

/// What a stored job means. Its document was stored with the server's
/// defaults filled in, so only the document decides.
pub fn spec_of(job: &JobRecord) -> Result<JobSpec, String> {
    let document: JobDocument =
        serde_json::from_value(job.document.clone()).map_err(|e| e.to_string())?;
    let stored = JobDefaults {
        max_runtime: None,
        max_max_runtime: Duration::from_secs(100 * 365 * 24 * 3600),
        retries: JobDefaults::default().retries,
        max_keep_on_failure: Duration::from_secs(100 * 365 * 24 * 3600),
    };
    document.spec(&stored).map_err(|problems| {
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// What `job` means, from the runner's copy.
fn spec_cached(shared: &Shared, job: &JobRecord) -> Result<Arc<JobSpec>, String> {
    if let Some(spec) = shared.jobs.specs.lock().unwrap().get(&job.id) {
        return Ok(spec.clone());
    }
    let spec = Arc::new(spec_of(job)?);
    shared
        .jobs
        .specs
        .lock()
        .unwrap()
        .insert(job.id, spec.clone());
    Ok(spec)
}

/// The name an attempt's instance carries as its cluster.
pub fn instance_name(job: JobId, attempt: u32) -> ClusterName {
    ClusterName::new(format!("job-{job}-{attempt}")).expect("a valid cluster name")
}

/// Runs while this server leads.
pub(crate) async fn run(shared: Arc<Shared>) {
    crate::lease::each_term(shared, term).await
}

async fn term(shared: Arc<Shared>, fence: Fence) {
    *shared.jobs.term_began.lock().unwrap() = Some(shared.clock.now());
    *shared.jobs.metered.lock().unwrap() = None;
    // A new term's inventory counts its listings from zero.
    shared.jobs.missing.lock().unwrap().clear();
    loop {
        if let Err(e) = pass(&shared, fence).await {
            tracing::warn!(error = %e, "a pass over the jobs failed");
        }
        tokio::select! {
            _ = shared.jobs.changed.notified() => {}
            _ = tokio::time::sleep(PASS) => {}
        }
    }
}

/// An instance of a job attempt, with its attempt and its driver.
type JobInstance = ((JobId, u32), (String, Instance));

/// The job runner's instances as the listings and creates have them.
struct Listed {
    /// Of job attempts.
    attempts: Vec<JobInstance>,
    /// Kept warm for jobs and not taken by one (as far as their tags
    /// say), with their driver.
    warm: Vec<(String, Instance)>,
    /// Each driver's count of listings.
    listings: HashMap<String, u64>,
}

/// None until every set has been listed this term.
fn job_instances(shared: &Shared) -> Option<Listed> {
    let inv = shared.inventory.lock().unwrap();
    if inv.values().any(|s| !s.listed) {
        return None;
    }
    let listings = inv
        .iter()
        .map(|(driver, set)| (driver.clone(), set.listings))
        .collect();
    let (mut attempts, mut warm) = (Vec::new(), Vec::new());
    for (driver, set) in inv.iter() {
        for (instance, _) in set.jobs.values() {
            match instance.job() {
                Some(key) => attempts.push((key, (driver.clone(), instance.clone()))),
                None => warm.push((driver.clone(), instance.clone())),
            }
        }
    }
    Some(Listed {
        attempts,
        warm,
        listings,
    })
}

/// One pass over every job not ended.
async fn pass(shared: &Shared, fence: Fence) -> Result<(), StoreError> {
    let Some(Listed {
        attempts: all,
        warm,
        listings,
    }) = job_instances(shared)
    else {
        return Ok(());
    };
    let live = shared.store.live_jobs().await?;
    {
        let ids: std::collections::HashSet<JobId> = live.iter().map(|j| j.id).collect();
        shared
            .jobs
            .specs
            .lock()
            .unwrap()
            .retain(|id, _| ids.contains(id));
    }
    meter(shared, fence, &all, &live).await;
    let present: std::collections::HashSet<InstanceId> = all
        .iter()
        .map(|(_, (_, i))| i.id.clone())
        .chain(warm.iter().map(|(_, i)| i.id.clone()))
        .collect();
    // One instance an attempt: the one its record names first. Another
    // (a create that made one although it answered with an error, and was
    // asked again) is a duplicate, destroyed.
    let recorded: std::collections::HashSet<&InstanceId> = live
        .iter()
        .filter_map(|j| j.live_attempt()?.instance.as_ref())
        .collect();
    let mut all = all;
    all.sort_by_key(|(_, (_, i))| !recorded.contains(&i.id));
    let mut instances: HashMap<(JobId, u32), (String, Instance)> = HashMap::new();
    // A warm instance a job took whose new tag a listing does not show yet
    // is that attempt's all the same.
    let mut warm: Vec<(String, Instance)> = warm;
    for job in &live {
        let Some(a) = job.live_attempt().filter(|a| a.warm.is_some()) else {
            continue;
        };
        if let Some(i) = warm
            .iter()
            .position(|(_, w)| Some(&w.id) == a.instance.as_ref())
        {
            let (driver, instance) = warm.swap_remove(i);
            instances.insert((job.id, a.attempt), (driver, instance));
        }
    }
    for (key, (driver, instance)) in all {
        if let std::collections::hash_map::Entry::Vacant(slot) = instances.entry(key) {
            slot.insert((driver, instance));
        } else {
            tracing::warn!(job = key.0, attempt = key.1, instance = %instance.id, "destroying a second instance of one attempt");
            destroy(shared, &driver, &instance.id).await;
        }
    }
    let now = shared.clock.now();
    let mut busy = 0;
    let mut queued = Vec::new();
    for job in &live {
        match job.live_attempt() {
            Some(attempt) => {
                busy += 1;
                let instance = instances.remove(&(job.id, attempt.attempt));
                if let Some(by) = job.org.as_ref().and_then(|o| shut_down(shared, job, o)) {
                    // Its organisation's budget ran out: stopped, as its
                    // cluster is; the next pass ends the attempt.
                    tracing::info!(job = job.id, %by, "stopping a job whose organisation ran out of money");
                    if let Err(e) = step(shared, fence, job, JobStep::Cancel { by }).await {
                        tracing::warn!(job = job.id, error = %e, "stopping a job failed");
                    }
                    continue;
                }
                if let Err(e) = tend(shared, fence, job, attempt, instance, &listings, now).await {
                    tracing::warn!(job = job.id, attempt = attempt.attempt, error = %e, "looking after a job's attempt failed");
                }
            }
            None => queued.push(job),
        }
    }
    {
        let under_way: std::collections::HashSet<&InstanceId> = live
            .iter()
            .filter_map(|j| j.live_attempt()?.instance.as_ref())
            .collect();
        shared
            .jobs
            .missing
            .lock()
            .unwrap()
            .retain(|id, _| under_way.contains(id));
    }
    // What is left is no attempt's under way: its attempt ended (the
    // agent reported, or the runner ended it) or its job is gone. A failed
    // attempt's is kept for debugging while its job's keep_on_failure says.
    for ((job, attempt), (driver, instance)) in instances {
        if kept_for_debugging(shared, job, attempt, now).await {
            continue;
        }
        tracing::info!(job, attempt, instance = %instance.id, "destroying the instance of an attempt no longer under way");
        destroy(shared, &driver, &instance.id).await;
    }
    let (mut warm, going) = tidy_warm(shared, warm, &present, now).await;
    // The instances kept warm count as busy: no instance is made beyond
    // `max_instances` to keep one warm; but jobs come first.
    let slots = shared
        .config
        .jobs
        .max_instances
        .saturating_sub(busy + warm.len() + going);
    let (made, in_line) = start_queued(shared, fence, &queued, slots, &mut warm).await;
    if in_line > 0 {
        give_way(shared, &mut warm, in_line).await;
    } else {
        keep_warm(shared, fence, &warm, slots.saturating_sub(made)).await;
    }
    Ok(())
}

/// Puts the listed instances of attempts of jobs charged to an
/// organisation on its meter (from their launch, at their attempt's
/// price, charged to the job's submitter) and ends the meters of those no
/// longer listed, whenever the set of job instances changed (and first
/// thing in a term): a job's node-seconds are charged like a cluster's
/// node's, kept-for-debugging and orphaned instances included.
async fn meter(shared: &Shared, fence: Fence, instances: &[JobInstance], live: &[JobRecord]) {
    let ids: BTreeSet<InstanceId> = instances.iter().map(|(_, (_, i))| i.id.clone()).collect();
    let first = {
        let metered = shared.jobs.metered.lock().unwrap();
        if metered.as_ref() == Some(&ids) {
            return;
        }
        metered.is_none()
    };
    let live: HashMap<JobId, &JobRecord> = live.iter().map(|j| (j.id, j)).collect();
    let mut listed = Vec::new();
    for &((job, attempt), (_, ref instance)) in instances {
        // An instance of a job ended (kept for debugging, or not destroyed
        // yet) is read from the store.
        let read;
        let record = match live.get(&job) {
            Some(record) => *record,
            None => match shared.store.job(job).await {
                Ok(Some(record)) => {
                    read = record;
                    &read
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(job, error = %e, "reading a job to meter its instance failed; trying again");
                    return;
                }
            },
        };
        let Some(org) = &record.org else { continue };
        let exact = record.attempts.iter().find(|a| a.attempt == attempt);
        // An instance kept warm is its attempt's only if that attempt took
        // it (a start that failed after tagging it leaves it no one's: it
        // is destroyed, and charged to nobody, as while it idled).
        let a = match instance.warm() {
            Some(hash) => exact.filter(|a| a.warm.as_deref() == Some(hash)),
            None => exact.or(record.attempts.last()),
        };
        let Some(a) = a else {
            continue;
        };
        // An instance kept warm is charged from when the job took it.
        let from = if a.warm.is_some() {
            instance.launched_at.max(a.started_at)
        } else {
            instance.launched_at
        };
        listed.push(NodeMeter::for_job(
            org.clone(),
            instance.id.clone(),
            from,
            a.price_per_hour,
            JobMeter {
                attempt: format!("{job}/{attempt}"),
                user: Username::new(record.submitted_by.as_str()).ok(),
            },
        ));
    }
    match shared
        .store
        .meter_job_instances(fence, &listed, first, shared.clock.now())
        .await
    {
        Ok(()) => *shared.jobs.metered.lock().unwrap() = Some(ids),
        Err(e) => {
            tracing::warn!(error = %e, "metering the jobs' instances failed; trying again")
        }
    }
}

/// Why an attempt under way must end now, if it must.
fn must_end(
    shared: &Shared,
    job: &JobRecord,
    spec: &JobSpec,
    a: &AttemptRecord,
    now: DateTime<Utc>,
) -> Option<AttemptEnd> {
    let settings = &shared.config.jobs;
    let past =
        |since: DateTime<Utc>, limit: Duration| (now - since).to_std().is_ok_and(|d| d > limit);
    // Silence and booting are counted from this term's start at the
    // earliest: a server down longer than the heartbeat timeout must not
    // end every attempt whose agent kept running meanwhile.
    let term_began = *shared.jobs.term_began.lock().unwrap();
    let heard = |since: DateTime<Utc>| term_began.map_or(since, |t| since.max(t));
    if job.cancel_by.is_some() {
        return Some(AttemptEnd::Cancelled);
    }
    match a.running_at {
        Some(running) if past(running, spec.max_runtime) => Some(AttemptEnd::TimedOut),
        Some(running)
            if past(
                heard(a.seen_at.unwrap_or(running)),
                settings.heartbeat_timeout,
            ) =>
        {
            Some(AttemptEnd::Lost)
        }
        None if past(heard(a.started_at), settings.boot_timeout) => Some(AttemptEnd::BootFailed),
        _ => None,
    }
}

/// Looks after one attempt under way.
async fn tend(
    shared: &Shared,
    fence: Fence,
    job: &JobRecord,
    a: &AttemptRecord,
    instance: Option<(String, Instance)>,
    listings: &HashMap<String, u64>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let spec = match spec_cached(shared, job) {
        Ok(spec) => spec,
        Err(why) => {
            tracing::warn!(job = job.id, %why, "a stored job no longer reads; ending its attempt");
            return end_attempt(
                shared,
                fence,
                job,
                a,
                AttemptEnd::BootFailed,
                None,
                instance,
            )
            .await;
        }
    };
    if let Some(end) = must_end(shared, job, &spec, a, now) {
        return end_attempt(shared, fence, job, a, end, Some(&spec), instance).await;
    }
    if let Some(id) = &a.instance {
        if instance.is_none() {
            if !missing_twice(shared, a, id, listings) {
                return Ok(());
            }
            // Made, and gone from the cloud's listing while its attempt was
            // under way: taken back (spot), or lost.
            let end = if a.market == flotilla_domain::Market::Spot {
                AttemptEnd::Interrupted
            } else {
                AttemptEnd::Lost
            };
            tracing::info!(job = job.id, attempt = a.attempt, %end, "an attempt's instance is gone");
            return end_attempt(shared, fence, job, a, end, Some(&spec), None).await;
        }
        shared.jobs.missing.lock().unwrap().remove(id);
        return Ok(());
    }
    match instance {
        // Tagged for this attempt by a start that failed, and then taken
        // by nobody: not this attempt's (its agent waits for the attempt
        // that took it).
        Some((driver, instance)) if instance.warm().is_some() => {
            tracing::info!(job = job.id, attempt = a.attempt, instance = %instance.id, "destroying an instance kept warm that no attempt took");
            destroy(shared, &driver, &instance.id).await;
            create(shared, fence, job, a, &spec).await?;
        }
        // Made before a crash or by the last leader: adopted.
        Some((_, instance)) => {
            step(
                shared,
                fence,
                job,
                JobStep::Created {
                    attempt: a.attempt,
                    instance: instance.id,
                },
            )
            .await?;
        }
        None => create(shared, fence, job, a, &spec).await?,
    }
    Ok(())
}

/// Whether attempt `a`'s instance `id`, which the inventory lacks now,
/// has been missing from two listings in a row: a cloud whose listing is
/// eventually consistent (EC2's) may leave a new instance out of one, and
/// ending its attempt for that would make a second instance for nothing.
fn missing_twice(
    shared: &Shared,
    a: &AttemptRecord,
    id: &InstanceId,
    listings: &HashMap<String, u64>,
) -> bool {
    let listings = shared
        .pools
        .get(&a.pool)
        .and_then(|pool| listings.get(&pool.driver).copied());
    // Its pool is gone: nothing will list it again.
    let Some(now) = listings else {
        return true;
    };
    let mut missing = shared.jobs.missing.lock().unwrap();
    let first = *missing.entry(id.clone()).or_insert(now);
    now > first
}

/// Ends attempt `a` with `end` (destroying its instance) and moves the
/// job on as its policy says.
async fn end_attempt(
    shared: &Shared,
    fence: Fence,
    job: &JobRecord,
    a: &AttemptRecord,
    end: AttemptEnd,
    spec: Option<&JobSpec>,
    instance: Option<(String, Instance)>,
) -> Result<(), StoreError> {
    if let Some((driver, instance)) = &instance {
        destroy(shared, driver, &instance.id).await;
    }
    let after = match spec {
        Some(spec) => after_attempt(spec, a.attempt, end),
        None => flotilla_domain::AfterAttempt::Ends(JobState::Failed),
    };
    tracing::info!(job = job.id, attempt = a.attempt, %end, "ending a job's attempt");
    step(
        shared,
        fence,
        job,
        JobStep::End {
            attempt: a.attempt,
            end,
            after,
        },
    )
    .await
    .map(|_| ())
}

async fn step(
    shared: &Shared,
    fence: Fence,
    job: &JobRecord,
    step: JobStep,
) -> Result<JobRecord, StoreError> {
    shared
        .store
        .step_job(
            job.id,
            Some(job.version),
            &step,
            Some(fence),
            shared.clock.now(),
        )
        .await
}

/// Makes attempt `a`'s instance.
async fn create(
    shared: &Shared,
    fence: Fence,
    job: &JobRecord,
    a: &AttemptRecord,
    spec: &JobSpec,
) -> Result<(), StoreError> {
    let fail = |why: String| async move {
        tracing::warn!(job = job.id, attempt = a.attempt, %why, "cannot make an attempt's instance");
        end_attempt(
            shared,
            fence,
            job,
            a,
            AttemptEnd::BootFailed,
            Some(spec),
            None,
        )
        .await
    };
    let Some(pool) = shared.pools.get(&a.pool) else {
        return fail(format!("pool {} is gone", a.pool)).await;
    };
    let Some(boot) = shared.jobs.boot.get() else {
        return fail("this server cannot start job agents".to_owned()).await;
    };
    let lifetime = attempt_lifetime(&shared.config.jobs, spec);
    let init_data = match boot.init_data(&AttemptStart {
        driver: &pool.driver,
        job: job.id,
        attempt: a.attempt,
        token: &a.token,
        lifetime,
    }) {
        Ok(init) => init,
        Err(why) => return fail(why).await,
    };
    let image = match crate::pools::launch(&shared.shared_configs, &pool) {
        Ok(launch) => launch.image,
        Err(why) => return fail(why).await,
    };
    let mut tags = pool.tags.clone();
    tags.insert(TAG_JOB.to_owned(), format!("{}/{}", job.id, a.attempt));
    let request = CreateRequest {
        cluster: instance_name(job.id, a.attempt),
        pool: a.pool.clone(),
        instance_type: a.instance_type.clone(),
        image,
        tags,
        init_data: Some(init_data),
        workload: None,
        pool_version: None,
        count: 1,
        shutdown_terminates: true,
        market: Some(a.market),
    };
    let outcome = make(shared, fence, &pool.driver, &request).await;
    match outcome {
        Ok(Some(instance)) => {
            tracing::info!(job = job.id, attempt = a.attempt, %instance, instance_type = %a.instance_type, "made an attempt's instance");
            step(
                shared,
                fence,
                job,
                JobStep::Created {
                    attempt: a.attempt,
                    instance,
                },
            )
            .await
            .map(|_| ())
        }
        Ok(None) => Ok(()),
        Err(why) => fail(why).await,
    }
}

/// Asks `driver` for the instance `request` describes, as a reconcile's
/// actions are asked (a new term waits for it), and records it in the
/// inventory: Some(its id), None if it is to be asked again (a transient
/// failure, or this server no longer leads), or why it cannot be made now
/// (the capacity and quota back-offs recorded).
async fn make(
    shared: &Shared,
    fence: Fence,
    driver: &str,
    request: &CreateRequest,
) -> Result<Option<InstanceId>, String> {
    let set = shared.sets[driver].clone();
    let made = {
        let _acting = shared.acting.read().await;
        if shared.leadership.fence() != Some(fence) {
            return Ok(None);
        }
        set.create(request).await
    };
    let mut inv = shared.inventory.lock().unwrap();
    let set_inv = inv.get_mut(driver).expect("known driver");
    match made {
        Ok(mut made) if !made.is_empty() => {
            let instance = made.swap_remove(0);
            let id = instance.id.clone();
            set_inv.add_job_instance(instance);
            Ok(Some(id))
        }
        Ok(_) => Err("the cloud made no instance".to_owned()),
        Err(CloudError::InsufficientCapacity { scope, message }) => {
            let until = Instant::now() + shared.config.capacity_backoff;
            set_inv.capacity_backoff.insert(scope, until);
            Err(format!("no capacity: {message}"))
        }
        Err(CloudError::QuotaExceeded { message }) => {
            set_inv.quota_blocked_at = Some(set_inv.total());
            Err(format!("cloud quota reached: {message}"))
        }
        Err(e @ CloudError::Permanent { .. }) => Err(e.to_string()),
        Err(e) => {
            tracing::info!(instance = %request.cluster, error = %e, "making a job's instance failed; trying again");
            Ok(None)
        }
    }
}

/// Whether the instance of attempt `attempt` of job `job`, over, is kept
/// for debugging: its script failed (exited non-zero) and its job's
/// `keep_on_failure` has not run out since.
async fn kept_for_debugging(shared: &Shared, job: JobId, attempt: u32, now: DateTime<Utc>) -> bool {
    let Ok(Some(record)) = shared.store.job(job).await else {
        return false;
    };
    let Some(keep) = spec_of(&record).ok().and_then(|s| s.keep_on_failure) else {
        return false;
    };
    // Not once its organisation's money ran out.
    if record
        .org
        .as_ref()
        .is_some_and(|o| org_shut_down(shared, o))
    {
        return false;
    }
    record
        .attempts
        .iter()
        .find(|a| a.attempt == attempt)
        .filter(|a| matches!(a.end, Some(AttemptEnd::Exited { status }) if status != 0))
        .and_then(|a| a.ended_at)
        .is_some_and(|ended| (now - ended).to_std().is_ok_and(|d| d < keep) || now < ended)
}

/// Asks `driver` to destroy `id`, unless it was asked lately.
async fn destroy(shared: &Shared, driver: &str, id: &InstanceId) {
    {
        let mut asked = shared.jobs.destroying.lock().unwrap();
        let now = Instant::now();
        asked.retain(|_, at| now.duration_since(*at) < DESTROY_AGAIN);
        if asked.contains_key(id) {
            return;
        }
        asked.insert(id.clone(), now);
    }
    let _acting = shared.acting.read().await;
    match shared.sets[driver].destroy(id).await {
        Ok(()) => tracing::info!(instance = %id, %driver, "destroying a job's instance"),
        Err(e) => {
            tracing::warn!(instance = %id, %driver, error = %e, "destroying a job's instance failed");
            shared.jobs.destroying.lock().unwrap().remove(id);
        }
    }
}

/// Every pool's types as the scheduler sees them.
async fn offers(shared: &Shared) -> BTreeMap<PoolName, Vec<Offer>> {
    let pools = shared.pools.snapshot();
    let mut all = BTreeMap::new();
    for (name, pool) in pools.iter() {
        let offerings = crate::pools::offerings(shared, name).await;
        let inv = shared.inventory.lock().unwrap();
        let now = Instant::now();
        let offers = pool
            .preference()
            .into_iter()
            .map(|t| {
                let offering = offerings
                    .iter()
                    .find(|(ty, _)| *ty == t.instance_type)
                    .map(|(_, o)| o.clone())
                    .unwrap_or_default();
                Offer {
                    pool: name.clone(),
                    instance_type: t.instance_type.clone(),
                    price_per_hour: t.price_per_hour,
                    shape: offering.shape.map(|s| Shape {
                        vcpus: s.vcpus,
                        memory_mib: s.memory_mib,
                    }),
                    spot_price: offering
                        .spot_price
                        .map(|p| Money::from_micros((p.usd_per_hour * 1_000_000.0).round() as i64)),
                    out_of_capacity: inv
                        .get(&pool.driver)
                        .is_some_and(|s| s.may_create(&t.instance_type, now) == 0),
                }
            })
            .collect();
        drop(inv);
        all.insert(name.clone(), offers);
    }
    all
}

/// Starts the queued jobs that fit an instance kept warm on one (taken
/// from `warm`), and those the scheduler finds an instance for within
/// `slots`; the others are told why they wait. Returns how many instances
/// it asked to be made, and how many jobs wait in line for an instance.
async fn start_queued(
    shared: &Shared,
    fence: Fence,
    queued: &[&JobRecord],
    slots: usize,
    warm: &mut Vec<(String, Instance)>,
) -> (usize, usize) {
    if queued.is_empty() {
        return (0, 0);
    }
    let now = shared.clock.now();
    let mut specs: HashMap<JobId, Arc<JobSpec>> = HashMap::new();
    for job in queued {
        match spec_cached(shared, job) {
            Ok(spec) => {
                // No funds, no start: a job charged to an organisation
                // whose budget is spent waits for credit.
                match spec.org.as_ref().and_then(|o| no_funds(shared, o)) {
                    Some(why) => reason(shared, fence, job, Some(why)).await,
                    None => {
                        specs.insert(job.id, spec);
                    }
                }
            }
            Err(why) => {
                tracing::warn!(job = job.id, %why, "a stored job no longer reads");
                reason(shared, fence, job, Some(format!("cannot be read: {why}"))).await;
            }
        }
    }
    let default_pool = [shared.default_pool.clone()];
    let waiting: Vec<Waiting<'_>> = queued
        .iter()
        .filter_map(|job| {
            let spec = specs.get(&job.id)?;
            Some(Waiting {
                key: job.queue_key(),
                resources: spec.resources,
                spot: spec.spot && still_spot(job, now, shared.config.jobs.spot_wait),
                pools: if spec.pools.is_empty() {
                    &default_pool
                } else {
                    &spec.pools
                },
            })
        })
        .collect();
    let slots = if shared.jobs.boot.get().is_some() {
        slots
    } else {
        0
    };
    let mut offers = offers(shared).await;
    // A pool whose instances cannot start an agent offers nothing, so no
    // slot goes to a job that could not run (and the jobs behind it are
    // not held up); a job that may only run there says why.
    let mut unbootable: BTreeMap<PoolName, String> = BTreeMap::new();
    if let Some(boot) = shared.jobs.boot.get() {
        for (name, pool_offers) in offers.iter_mut() {
            let driver = shared.pools.get(name).map(|p| p.driver.clone());
            if let Some(why) = driver.and_then(|d| boot.refuses(&d)) {
                pool_offers.clear();
                unbootable.insert(name.clone(), why);
            }
        }
    }
    let by_id: HashMap<JobId, &JobRecord> = queued.iter().map(|j| (j.id, *j)).collect();
    let on_warm = take_warm_instances(shared, fence, &waiting, &by_id, &offers, warm).await;
    let waiting: Vec<Waiting<'_>> = waiting
        .into_iter()
        .filter(|w| !on_warm.contains(&w.key.id))
        .collect();
    let decisions = schedule(&waiting, &offers, slots);
    let mut made = 0;
    let in_line = decisions
        .iter()
        .filter(|(_, d)| matches!(d, Decision::InLine { .. }))
        .count();
    for (id, decision) in decisions {
        let job = by_id[&id];
        match decision {
            // Only a pool whose instances start an agent offered a type.
            Decision::Start(fit) => {
                let attempt = NewAttempt {
                    pool: fit.pool,
                    instance_type: fit.instance_type,
                    market: fit.market,
                    price_per_hour: fit.price_per_hour,
                    token: new_token(),
                    warm: None,
                };
                made += 1;
                match step(shared, fence, job, JobStep::Start(attempt)).await {
                    Ok(started) => {
                        let a = started.live_attempt().expect("just started");
                        let spec = &specs[&id];
                        tracing::info!(job = id, attempt = a.attempt, instance_type = %a.instance_type, market = a.market.as_str(), "starting a job's attempt");
                        if let Err(e) = create(shared, fence, &started, a, spec).await {
                            tracing::warn!(job = id, error = %e, "making an attempt's instance failed");
                        }
                    }
                    Err(e) => tracing::info!(job = id, error = %e, "starting a job failed"),
                }
            }
            Decision::Wait(why) => {
                let pools = specs
                    .get(&id)
                    .map(|s| s.pools.as_slice())
                    .unwrap_or_default();
                let pools = if pools.is_empty() {
                    &default_pool[..]
                } else {
                    pools
                };
                let why = match pools
                    .iter()
                    .map(|p| unbootable.get(p))
                    .collect::<Option<Vec<_>>>()
                {
                    Some(whys) if !whys.is_empty() => whys[0].clone(),
                    _ => why,
                };
                reason(shared, fence, job, Some(why)).await
            }
            Decision::InLine { .. } => {
                let why = if shared.jobs.boot.get().is_none() {
                    "this server cannot start job agents (it has no address agents reach it at)"
                        .to_owned()
                } else {
                    flotilla_domain::IN_LINE.to_owned()
                };
                reason(shared, fence, job, Some(why)).await
            }
        }
    }
    (made, in_line)
}

/// Starts the jobs of `waiting` that fit an instance kept warm (in queue
/// order; [`take_warm`]) on it, taking it out of `warm`: first the
/// instance's tag names the attempt, so that whatever happens next it is
/// known as that attempt's (and destroyed if the start is not stored),
/// then the attempt is stored with the instance. Returns the jobs started.
async fn take_warm_instances(
    shared: &Shared,
    fence: Fence,
    waiting: &[Waiting<'_>],
    by_id: &HashMap<JobId, &JobRecord>,
    offers: &BTreeMap<PoolName, Vec<Offer>>,
    warm: &mut Vec<(String, Instance)>,
) -> BTreeSet<JobId> {
    let mut started = BTreeSet::new();
    if warm.is_empty() {
        return started;
    }
    // Each with its pool's offer for its type (a pool that no longer
    // offers it takes no job; it is replaced when it has idled long enough).
    let nodes: Vec<(usize, WarmNode, &Offer)> = warm
        .iter()
        .enumerate()
        .filter_map(|(i, (_, instance))| {
            let pool = instance.pool()?;
            let offer = offers
                .get(&pool)?
                .iter()
                .find(|o| o.instance_type == instance.instance_type)?;
            Some((
                i,
                WarmNode {
                    pool,
                    instance_type: instance.instance_type.clone(),
                    shape: offer.shape,
                },
                offer,
            ))
        })
        .collect();
    let picks = take_warm(
        waiting,
        &nodes.iter().map(|(_, n, _)| n.clone()).collect::<Vec<_>>(),
    );
    let mut taken = Vec::new();
    for (id, pick) in picks {
        let (index, node, offer) = &nodes[pick];
        let (driver, instance) = &warm[*index];
        let job = by_id[&id];
        let attempt = job.attempts.len() as u32 + 1;
        let Some(hash) = instance.warm().map(str::to_owned) else {
            continue;
        };
        let tag = Tags::from([(TAG_JOB.to_owned(), format!("{id}/{attempt}"))]);
        let tagged = {
            let _acting = shared.acting.read().await;
            if shared.leadership.fence() != Some(fence) {
                break;
            }
            shared
                .jobs
                .warm_spent
                .lock()
                .unwrap()
                .insert(instance.id.clone());
            taken.push(*index);
            shared.sets[driver].set_tags(&instance.id, &tag).await
        };
        if let Err(e) = tagged {
            tracing::warn!(job = id, instance = %instance.id, error = %e, "taking an instance kept warm failed; it is replaced");
            destroy(shared, driver, &instance.id).await;
            continue;
        }
        if let Some((i, _)) = shared
            .inventory
            .lock()
            .unwrap()
            .get_mut(driver)
            .and_then(|set| set.jobs.get_mut(&instance.id))
        {
            i.tags.extend(tag);
        }
        let start = NewAttempt {
            pool: node.pool.clone(),
            instance_type: node.instance_type.clone(),
            market: flotilla_domain::Market::OnDemand,
            price_per_hour: offer.price_per_hour,
            token: new_token(),
            warm: Some((instance.id.clone(), hash)),
        };
        match step(shared, fence, job, JobStep::Start(start)).await {
            Ok(_) => {
                tracing::info!(job = id, attempt, instance = %instance.id, instance_type = %node.instance_type, "starting a job's attempt on an instance kept warm");
                started.insert(id);
            }
            // Its tag names an attempt that did not start: no job's.
            Err(e) => {
                tracing::info!(job = id, error = %e, "starting a job failed; destroying the instance kept warm it took");
                destroy(shared, driver, &instance.id).await;
            }
        }
    }
    taken.sort_unstable();
    for index in taken.into_iter().rev() {
        warm.remove(index);
    }
    started
}

/// The instances kept warm that may still be taken, oldest first, and
/// how many others are still listed: those idle past `warm_max_idle`, of a
/// pool gone, that keeps fewer now or no longer offers their type, and
/// those spent ([`JobRunner::warm_spent`]) are destroyed.
async fn tidy_warm(
    shared: &Shared,
    warm: Vec<(String, Instance)>,
    present: &std::collections::HashSet<InstanceId>,
    now: DateTime<Utc>,
) -> (Vec<(String, Instance)>, usize) {
    let max_idle = shared.config.jobs.warm_max_idle;
    let mut warm = warm;
    warm.sort_by_key(|(_, i)| (i.launched_at, i.id.clone()));
    shared
        .jobs
        .warm_spent
        .lock()
        .unwrap()
        .retain(|id| present.contains(id));
    let mut kept: Vec<(String, Instance)> = Vec::new();
    let mut going = 0;
    let mut per_pool: HashMap<PoolName, u32> = HashMap::new();
    // The youngest are kept where a pool keeps fewer.
    for (driver, instance) in warm.into_iter().rev() {
        let spec = instance
            .pool()
            .and_then(|p| Some((shared.pools.get(&p)?, p)));
        let spent = shared
            .jobs
            .warm_spent
            .lock()
            .unwrap()
            .contains(&instance.id);
        let why = if spent {
            Some("it is spent")
        } else if (now - instance.launched_at)
            .to_std()
            .is_ok_and(|idle| idle >= max_idle)
        {
            Some("it idled past warm_max_idle")
        } else {
            match spec {
                None => Some("its pool is gone"),
                Some((spec, _)) if !spec.offers(&instance.instance_type) => {
                    Some("its pool no longer offers its type")
                }
                Some((spec, pool)) => {
                    let n = per_pool.entry(pool).or_default();
                    *n += 1;
                    (*n > spec.idle_nodes).then_some("its pool keeps fewer")
                }
            }
        };
        match why {
            Some(why) => {
                going += 1;
                shared
                    .jobs
                    .warm_spent
                    .lock()
                    .unwrap()
                    .insert(instance.id.clone());
                tracing::info!(instance = %instance.id, %driver, why, "destroying an instance kept warm");
                destroy(shared, &driver, &instance.id).await;
            }
            None => kept.push((driver, instance)),
        }
    }
    kept.reverse();
    (kept, going)
}

/// Destroys up to `n` of the instances kept warm that no job took (the
/// oldest first): they give way to jobs waiting for an instance, which
/// `max_instances` would not let be made while they idle.
async fn give_way(shared: &Shared, warm: &mut Vec<(String, Instance)>, n: usize) {
    for (driver, instance) in warm.drain(..n.min(warm.len())) {
        shared
            .jobs
            .warm_spent
            .lock()
            .unwrap()
            .insert(instance.id.clone());
        tracing::info!(instance = %instance.id, %driver, "destroying an instance kept warm: jobs wait for an instance");
        destroy(shared, &driver, &instance.id).await;
    }
}

/// Makes instances kept warm for the pools that keep fewer than their
/// `idle_nodes`, within `slots`: each of the pool's cheapest type, on
/// demand, tagged with the hash of the token its agent asks for a job
/// with.
async fn keep_warm(shared: &Shared, fence: Fence, warm: &[(String, Instance)], slots: usize) {
    let Some(boot) = shared.jobs.boot.get() else {
        return;
    };
    let mut slots = slots;
    for (name, pool) in shared.pools.snapshot().iter() {
        if pool.idle_nodes == 0 || slots == 0 {
            continue;
        }
        let have = warm
            .iter()
            .filter(|(_, i)| i.pool().as_ref() == Some(name))
            .count();
        let Some(ty) = pool.preferred().cloned() else {
            continue;
        };
        if boot.refuses(&pool.driver).is_some() {
            continue;
        }
        let failed = |why: String| {
            tracing::warn!(pool = %name, %why, "cannot make an instance kept warm; trying again in 30s");
            shared
                .jobs
                .warm_failed
                .lock()
                .unwrap()
                .insert(name.clone(), Instant::now() + WARM_AGAIN);
        };
        if shared
            .jobs
            .warm_failed
            .lock()
            .unwrap()
            .get(name)
            .is_some_and(|until| Instant::now() < *until)
        {
            continue;
        }
        for _ in have..pool.idle_nodes as usize {
            if slots == 0 {
                return;
            }
            let blocked = shared
                .inventory
                .lock()
                .unwrap()
                .get(&pool.driver)
                .is_none_or(|s| s.may_create(&ty, Instant::now()) == 0);
            if blocked {
                break;
            }
            let token = new_token();
            let init_data = match boot.warm_init_data(&WarmStart {
                driver: &pool.driver,
                token: &token,
                lifetime: shared.config.jobs.boot_timeout
                    + shared.config.jobs.warm_max_idle
                    + LIFETIME_MARGIN,
            }) {
                Ok(init) => init,
                Err(why) => {
                    tracing::debug!(pool = %name, %why, "a pool's instances cannot be kept warm");
                    break;
                }
            };
            let image = match crate::pools::launch(&shared.shared_configs, pool) {
                Ok(launch) => launch.image,
                Err(why) => {
                    failed(why);
                    break;
                }
            };
            let mut tags = pool.tags.clone();
            tags.insert(TAG_WARM.to_owned(), warm_token_hash(&token));
            let request = CreateRequest {
                cluster: warm_name(),
                pool: name.clone(),
                instance_type: ty.clone(),
                image,
                tags,
                init_data: Some(init_data),
                workload: None,
                pool_version: None,
                count: 1,
                shutdown_terminates: true,
                market: Some(flotilla_domain::Market::OnDemand),
            };
            slots -= 1;
            match make(shared, fence, &pool.driver, &request).await {
                Ok(Some(id)) => {
                    tracing::info!(pool = %name, instance = %id, instance_type = %ty, "made an instance kept warm for jobs")
                }
                Ok(None) => {}
                Err(why) => {
                    failed(why);
                    break;
                }
            }
        }
    }
}

/// The name an instance kept warm carries as its cluster: `warm-` and 8
/// random hex digits (a job that takes it does not rename it).
fn warm_name() -> ClusterName {
    use rand::RngCore;
    let n = rand::thread_rng().next_u32();
    ClusterName::new(format!("warm-{n:08x}")).expect("a valid cluster name")
}

/// Whether a queued job that asked for spot is still bought on spot: not
/// after a spot instance of it was taken back, nor once it has waited
/// `spot_wait` (since its submission or its last attempt's end) for one.
fn still_spot(job: &JobRecord, now: DateTime<Utc>, spot_wait: Duration) -> bool {
    if job
        .attempts
        .iter()
        .any(|a| a.end == Some(AttemptEnd::Interrupted))
    {
        return false;
    }
    let since = job
        .attempts
        .last()
        .and_then(|a| a.ended_at)
        .unwrap_or(job.submitted_at);
    (now - since)
        .to_std()
        .map_or(true, |waited| waited < spot_wait)
}

/// Who stops `job`, under way and charged to `org`, if its organisation's
/// budget ran out (a shutdown, as for its cluster) and nobody asked
/// already.
fn shut_down(shared: &Shared, job: &JobRecord, org: &flotilla_domain::OrgName) -> Option<String> {
    if job.cancel_by.is_some() || !org_shut_down(shared, org) {
        return None;
    }
    Some(format!("the budget shutdown of organisation {org}"))
}

/// Whether `org`'s budget shutdown is under way.
fn org_shut_down(shared: &Shared, org: &flotilla_domain::OrgName) -> bool {
    ClusterName::new(org.as_str())
        .ok()
        .and_then(|name| shared.orgs.get(&name))
        .is_some_and(|o| o.budget.exhausted_at.is_some())
}

/// Why a job charged to `org` cannot start now, if its budget is spent
/// (or the organisation is gone).
fn no_funds(shared: &Shared, org: &flotilla_domain::OrgName) -> Option<String> {
    let name = ClusterName::new(org.as_str()).ok()?;
    match shared.orgs.get(&name) {
        None => Some(format!(
            "organisation {org} does not exist (any more); cancel the job"
        )),
        Some(o) if o.is_exhausted() || o.budget.exhausted_at.is_some() => Some(format!(
            "waiting for budget: organisation {org} has {} left, at or below its shutdown threshold {}; an admin adds credit with `flotilla org credit {org} AMOUNT --reason TEXT`",
            o.budget.balance.cents(),
            o.budget.shutdown_threshold.cents()
        )),
        Some(_) => None,
    }
}

/// Records why a queued job waits, if that changed.
async fn reason(shared: &Shared, fence: Fence, job: &JobRecord, why: Option<String>) {
    if job.reason == why {
        return;
    }
    if let Err(e) = step(shared, fence, job, JobStep::Reason(why)).await {
        tracing::debug!(job = job.id, error = %e, "recording why a job waits failed");
    }
}

/// A token an attempt's agent presents: 256 random bits, hex.
fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    flotilla_domain::hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(submitted_at: DateTime<Utc>, attempts: Vec<AttemptRecord>) -> JobRecord {
        JobRecord {
            id: 1,
            name: "j".into(),
            document: serde_json::json!({}),
            submitted_by: "ann".into(),
            org: None,
            priority: 0,
            state: JobState::Queued,
            reason: None,
            cancel_by: None,
            attempts,
            submitted_at,
            updated_at: submitted_at,
            version: 1,
        }
    }

    fn ended(at: DateTime<Utc>, end: AttemptEnd) -> AttemptRecord {
        AttemptRecord {
            attempt: 1,
            pool: PoolName::new("default").unwrap(),
            instance_type: flotilla_domain::InstanceType::new("m5.large").unwrap(),
            market: flotilla_domain::Market::Spot,
            price_per_hour: Money::ZERO,
            instance: None,
            started_at: at,
            running_at: None,
            ended_at: Some(at),
            end: Some(end),
            seen_at: None,
            token: String::new(),
            warm: None,
        }
    }

    #[test]
    fn a_spot_job_goes_on_demand_after_an_interruption_or_a_long_wait() {
        let t0 = Utc::now();
        let minutes = |m: i64| t0 + chrono::Duration::minutes(m);
        let wait = Duration::from_secs(600);
        assert!(still_spot(&job(t0, vec![]), minutes(9), wait));
        assert!(!still_spot(&job(t0, vec![]), minutes(10), wait));
        // The wait counts from the last attempt's end.
        let lost = job(t0, vec![ended(minutes(8), AttemptEnd::Lost)]);
        assert!(still_spot(&lost, minutes(15), wait));
        assert!(!still_spot(&lost, minutes(18), wait));
        let interrupted = job(t0, vec![ended(minutes(1), AttemptEnd::Interrupted)]);
        assert!(!still_spot(&interrupted, minutes(2), wait));
    }
}
