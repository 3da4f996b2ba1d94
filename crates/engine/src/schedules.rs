//! The schedule firer, on the leader: each pass reads the schedules,
//! fires those whose time has come (a job from the schedule's template,
//! written with the schedule's next time in one fenced transaction, so a
//! due time queues one job however many servers race), skips the runs
//! missed while no server led where the schedule says so, then sleeps
//! until the next is due or a schedule changes.

use std::sync::Arc;
use std::time::Duration;

use flotilla_domain::{CronTimes, Fired, Firing, Schedule, TemplateArgs};
use flotilla_store::{Fence, NewJob, StoreError};

use crate::{Engine, Shared};

/// The longest the firer sleeps without reading the schedules again.
const REREAD: Duration = Duration::from_secs(30);

/// Runs while this server leads.
pub(crate) async fn run(shared: Arc<Shared>) {
    crate::lease::each_term(shared, term).await
}

async fn term(shared: Arc<Shared>, fence: Fence) {
    loop {
        let wait = match pass(&shared, fence).await {
            Ok(wait) => wait,
            Err(e) => {
                tracing::warn!(error = %e, "a pass over the schedules failed");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = shared.jobs.schedules_changed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Fires what is due; how long until the next is.
async fn pass(shared: &Arc<Shared>, fence: Fence) -> Result<Duration, StoreError> {
    let now = shared.clock.now();
    let mut wait = REREAD;
    for schedule in shared.store.schedules().await? {
        let times = match CronTimes::parse(&schedule.cron) {
            Ok(times) => times,
            Err(why) => {
                tracing::warn!(schedule = %schedule.name, %why, "a stored schedule's times no longer read");
                continue;
            }
        };
        let (next_at, job, fired) = match schedule.firing(&times, now) {
            Firing::NotYet => {
                if let Some(due) = schedule.next_at.filter(|_| !schedule.paused) {
                    wait = wait.min((due - now).to_std().unwrap_or_default());
                }
                continue;
            }
            Firing::Skip { next_at } => (next_at, None, Fired::Skipped),
            Firing::Fire { next_at } => match job_of(shared, &schedule) {
                Ok(job) => (next_at, Some(job), Fired::Queued),
                Err(why) => (next_at, None, Fired::Refused(why)),
            },
        };
        let after = schedule.fired(now, next_at, fired);
        match shared
            .store
            .fire_schedule(&schedule, &after, job.as_ref(), fence, now)
            .await
        {
            Ok(Some(job)) => {
                tracing::info!(schedule = %schedule.name, job = job.id, late_ms = (now - schedule.next_at.unwrap_or(now)).num_milliseconds(), "schedule fired")
            }
            Ok(None) => {
                tracing::info!(schedule = %schedule.name, why = after.last_error.as_deref().unwrap_or("missed"), "schedule fired no job")
            }
            // Another write came first: read again at once.
            Err(StoreError::Stale { .. }) => wait = Duration::ZERO,
            Err(e) => return Err(e),
        }
        if let Some(next) = after.next_at {
            wait = wait.min((next - now).to_std().unwrap_or_default());
        }
    }
    Ok(wait)
}

/// The job a fire of `schedule` queues, or why there is none.
fn job_of(shared: &Arc<Shared>, schedule: &Schedule) -> Result<NewJob, String> {
    let settings = &shared.config.jobs;
    let template = settings.templates.get(&schedule.template).ok_or_else(|| {
        format!(
            "the server's config has no job template {:?} now",
            schedule.template
        )
    })?;
    if shared
        .desired
        .get(&schedule.cluster)
        .is_none_or(|r| r.destroying)
    {
        return Err(format!(
            "cluster {} is not deployed; deploy it, or pause the schedule",
            schedule.cluster
        ));
    }
    let view = Engine {
        shared: shared.clone(),
    }
    .view(&schedule.cluster);
    let address = view
        .nodes
        .iter()
        .find_map(|n| n.workload_address.clone().or_else(|| n.address.clone()))
        .unwrap_or_default();
    let args = TemplateArgs {
        cluster: &schedule.cluster,
        version: &schedule.version,
        address: &address,
    };
    let said = |problems: Vec<flotilla_domain::Problem>| {
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    let document = template
        .instantiate(&args, &settings.defaults)
        .map_err(said)?;
    let spec = document.spec(&settings.defaults).map_err(said)?;
    Ok(NewJob {
        name: spec.name.clone(),
        document: serde_json::to_value(document.resolved(&spec))
            .expect("a job document serialises"),
        submitted_by: schedule.created_by.clone(),
        org: spec.org.clone(),
        priority: spec.priority,
    })
}
