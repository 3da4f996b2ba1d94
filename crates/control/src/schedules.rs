//! Schedules (admins): a job template run against a cluster at a version
//! on a cron schedule. Creating, pausing, resuming and deleting one are
//! commands; the leader's firer (in the engine) runs them.

use flotilla_domain::{
    authorize_admin, check_schedule_name, check_version, Caller, ChangeKind, ClusterName,
    CronTimes, Missed, Schedule,
};
use flotilla_engine::EngineError;

use crate::{sealed, Command, Control};

/// Create a schedule.
#[derive(Debug, Clone)]
pub struct CreateSchedule {
    pub name: String,
    pub cron: String,
    pub template: String,
    pub cluster: String,
    pub version: String,
    pub missed: Missed,
}

impl sealed::Sealed for CreateSchedule {}

impl Command for CreateSchedule {
    type Committed = String;
    type View = Schedule;
    const NAME: &'static str = "create schedule";

    async fn commit(self, control: &Control, caller: &Caller) -> Result<String, EngineError> {
        authorize_admin(caller)?;
        check_schedule_name(&self.name).map_err(EngineError::InvalidSchedule)?;
        let times = CronTimes::parse(&self.cron).map_err(EngineError::InvalidSchedule)?;
        control.template(&self.template)?;
        let cluster = ClusterName::new(self.cluster.as_str())?;
        check_version(&self.version).map_err(EngineError::InvalidSchedule)?;
        let engine = control.engine();
        let now = engine.now();
        let next_at = times.next_after(now);
        if next_at.is_none() {
            return Err(EngineError::InvalidSchedule(format!(
                "{:?} names no time after now",
                self.cron
            )));
        }
        let schedule = Schedule {
            name: self.name.clone(),
            cron: self.cron,
            template: self.template,
            cluster,
            version: self.version,
            missed: self.missed,
            paused: false,
            created_by: crate::submitter(caller),
            created_at: now,
            next_at,
            last_fired_at: None,
            last_job: None,
            last_error: None,
            revision: 1,
        };
        engine.store().create_schedule(&schedule, now).await?;
        tracing::info!(schedule = %schedule.name, cron = %schedule.cron, "schedule created");
        Ok(self.name)
    }

    async fn answer(name: String, control: &Control) -> Result<Schedule, EngineError> {
        control.stored_schedule(&name).await
    }
}

/// Pause a schedule (it fires no more until resumed), or resume one (it
/// fires next at its next time after now; what it missed while paused is
/// not run).
#[derive(Debug, Clone)]
pub struct PauseSchedule {
    pub name: String,
    pub paused: bool,
}

impl sealed::Sealed for PauseSchedule {}

impl Command for PauseSchedule {
    type Committed = String;
    type View = Schedule;
    const NAME: &'static str = "pause schedule";

    async fn commit(self, control: &Control, caller: &Caller) -> Result<String, EngineError> {
        authorize_admin(caller)?;
        let before = control.stored_schedule(&self.name).await?;
        if before.paused == self.paused {
            return Ok(self.name);
        }
        let engine = control.engine();
        let now = engine.now();
        let mut after = before.clone();
        after.paused = self.paused;
        after.revision += 1;
        after.next_at = if self.paused {
            None
        } else {
            CronTimes::parse(&before.cron)
                .map_err(EngineError::InvalidSchedule)?
                .next_after(now)
        };
        engine
            .store()
            .update_schedule(&before, &after, ChangeKind::ScheduleChanged, now)
            .await?;
        Ok(self.name)
    }

    async fn answer(name: String, control: &Control) -> Result<Schedule, EngineError> {
        control.stored_schedule(&name).await
    }
}

/// Delete a schedule (the jobs it queued stay).
#[derive(Debug, Clone)]
pub struct DeleteSchedule {
    pub name: String,
}

impl sealed::Sealed for DeleteSchedule {}

impl Command for DeleteSchedule {
    type Committed = ();
    type View = ();
    const NAME: &'static str = "delete schedule";

    async fn commit(self, control: &Control, caller: &Caller) -> Result<(), EngineError> {
        authorize_admin(caller)?;
        let engine = control.engine();
        if !engine
            .store()
            .delete_schedule(&self.name, engine.now())
            .await?
        {
            return Err(EngineError::UnknownSchedule(self.name));
        }
        tracing::info!(schedule = %self.name, "schedule deleted");
        Ok(())
    }

    async fn answer(_: (), _: &Control) -> Result<(), EngineError> {
        Ok(())
    }
}

impl Control {
    async fn stored_schedule(&self, name: &str) -> Result<Schedule, EngineError> {
        self.engine()
            .store()
            .schedules()
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| EngineError::UnknownSchedule(name.to_owned()))
    }

    /// Every schedule (admins).
    pub async fn schedules(&self, caller: &Caller) -> Result<Vec<Schedule>, EngineError> {
        authorize_admin(caller)?;
        Ok(self.engine().store().schedules().await?)
    }

    /// One schedule (admins).
    pub async fn schedule(&self, caller: &Caller, name: &str) -> Result<Schedule, EngineError> {
        authorize_admin(caller)?;
        self.stored_schedule(name).await
    }
}
