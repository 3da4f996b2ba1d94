//! Schedules (issue 13): a job template run against a cluster at a
//! version on a cron schedule, fired by the leader on time. A schedule
//! knows when it fires next (`next_at`); the leader fires it once that is
//! past, writing the job and the schedule's next time in one transaction,
//! so a fire happens once however many servers there are. Runs missed
//! while no server led are run once, or skipped, as the schedule says.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::names::ClusterName;

/// The longest a schedule's name may be.
pub const MAX_SCHEDULE_NAME: usize = 40;

/// How late a fire may be and still count as on time: later, it was
/// missed (no server led when it fell due).
pub const ON_TIME: Duration = Duration::from_secs(60);

/// What to do with the runs missed while no server led.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// One run for all of them, as soon as a server leads.
    RunOnce,
    /// None: wait for the next time.
    Skip,
}

impl Missed {
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::RunOnce => "run_once",
            Missed::Skip => "skip",
        }
    }

    pub fn parse(s: &str) -> Option<Missed> {
        [Missed::RunOnce, Missed::Skip]
            .into_iter()
            .find(|m| m.as_str() == s.replace('-', "_"))
    }
}

/// A schedule as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub name: String,
    /// Five fields (minute hour day month weekday), or six with seconds
    /// first; in UTC.
    pub cron: String,
    pub template: String,
    pub cluster: ClusterName,
    pub version: String,
    pub missed: Missed,
    pub paused: bool,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// When it fires next; None while paused.
    pub next_at: Option<DateTime<Utc>>,
    pub last_fired_at: Option<DateTime<Utc>>,
    /// The job its last fire queued.
    pub last_job: Option<u64>,
    /// Why its last fire queued no job, if it did not.
    pub last_error: Option<String>,
    /// Counts its writes: each is checked against the one read.
    pub revision: u64,
}

/// A cron expression, parsed.
#[derive(Debug, Clone)]
pub struct CronTimes(croner::Cron);

impl CronTimes {
    /// `text` as a cron expression, or why it is not one.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fields = text.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "{text:?} has {fields} fields; write five (minute hour day month weekday, e.g. \"0 3 * * *\"), or six with seconds first"
            ));
        }
        croner::Cron::from_str(text)
            .map(Self)
            .map_err(|e| format!("{text:?} is not a cron expression: {e}"))
    }

    /// The first time after `t` it names, if any.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.0.find_next_occurrence(&t, false).ok()
    }
}

/// Refused unless `name` is a schedule's name: a lowercase letter, then
/// lowercase letters, digits and `-`.
pub fn check_schedule_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SCHEDULE_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a schedule name: a lowercase letter, then up to {} lowercase letters, digits or -",
            MAX_SCHEDULE_NAME - 1
        ))
    }
}

/// What a schedule's due time calls for at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firing {
    /// Not due yet (or paused).
    NotYet,
    /// Queue a run, and fire next at `next_at`.
    Fire { next_at: Option<DateTime<Utc>> },
    /// Missed, and skipped: fire next at `next_at`.
    Skip { next_at: Option<DateTime<Utc>> },
}

/// What a fire came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fired {
    /// A job was queued (the store records which, as it queues it).
    Queued,
    /// Missed, and skipped.
    Skipped,
    /// No job could be made: why.
    Refused(String),
}

impl Schedule {
    /// What it calls for at `now`, its times being `times`.
    pub fn firing(&self, times: &CronTimes, now: DateTime<Utc>) -> Firing {
        let Some(due) = self.next_at.filter(|_| !self.paused) else {
            return Firing::NotYet;
        };
        if now < due {
            return Firing::NotYet;
        }
        // However many times were missed, the next is after now.
        let next_at = times.next_after(now);
        let late = (now - due).to_std().unwrap_or_default();
        if late > ON_TIME && self.missed == Missed::Skip {
            Firing::Skip { next_at }
        } else {
            Firing::Fire { next_at }
        }
    }

    /// The schedule after a fire at `now` that came to `fired`, to fire
    /// next at `next_at`.
    pub fn fired(
        &self,
        now: DateTime<Utc>,
        next_at: Option<DateTime<Utc>>,
        fired: Fired,
    ) -> Schedule {
        let mut next = self.clone();
        next.next_at = next_at;
        next.revision += 1;
        match fired {
            Fired::Queued => {
                next.last_fired_at = Some(now);
                next.last_error = None;
            }
            // Nothing ran, nothing failed.
            Fired::Skipped => {}
            Fired::Refused(why) => {
                next.last_fired_at = Some(now);
                next.last_error = Some(why);
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn schedule(cron: &str, next_at: &str, missed: Missed) -> Schedule {
        Schedule {
            name: "nightly".into(),
            cron: cron.into(),
            template: "test".into(),
            cluster: ClusterName::new("demo").unwrap(),
            version: "main".into(),
            missed,
            paused: false,
            created_by: "admin".into(),
            created_at: at("2026-12-01T00:00:00Z"),
            next_at: Some(at(next_at)),
            last_fired_at: None,
            last_job: None,
            last_error: None,
            revision: 1,
        }
    }

    #[test]
    fn five_fields_are_minutes_six_have_seconds() {
        let nightly = CronTimes::parse("0 3 * * *").unwrap();
        assert_eq!(
            nightly.next_after(at("2026-12-07T10:00:00Z")),
            Some(at("2026-12-08T03:00:00Z"))
        );
        assert_eq!(
            nightly.next_after(at("2026-12-08T03:00:00Z")),
            Some(at("2026-12-09T03:00:00Z")),
            "strictly after"
        );
        let often = CronTimes::parse("*/2 * * * * *").unwrap();
        assert_eq!(
            often.next_after(at("2026-12-07T10:00:01Z")),
            Some(at("2026-12-07T10:00:02Z"))
        );
        for bad in [
            "",
            "* * * *",
            "0 3 * * * * *",
            "61 * * * *",
            "0 3 * * funday",
        ] {
            assert!(CronTimes::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_due_schedule_fires_once_and_moves_on() {
        let times = CronTimes::parse("0 3 * * *").unwrap();
        let s = schedule("0 3 * * *", "2026-12-08T03:00:00Z", Missed::Skip);
        assert_eq!(s.firing(&times, at("2026-12-08T02:59:59Z")), Firing::NotYet);
        let on_time = s.firing(&times, at("2026-12-08T03:00:00.400Z"));
        assert_eq!(
            on_time,
            Firing::Fire {
                next_at: Some(at("2026-12-09T03:00:00Z"))
            }
        );
        let fired = s.fired(
            at("2026-12-08T03:00:00.400Z"),
            Some(at("2026-12-09T03:00:00Z")),
            Fired::Queued,
        );
        assert_eq!(fired.last_fired_at, Some(at("2026-12-08T03:00:00.400Z")));
        assert_eq!(fired.revision, 2);
        assert_eq!(
            fired.firing(&times, at("2026-12-08T03:00:01Z")),
            Firing::NotYet,
            "fired once"
        );
        let mut paused = s.clone();
        paused.paused = true;
        assert_eq!(
            paused.firing(&times, at("2026-12-09T00:00:00Z")),
            Firing::NotYet
        );
    }

    #[test]
    fn missed_runs_run_once_or_are_skipped() {
        let times = CronTimes::parse("0 3 * * *").unwrap();
        // No server led for three days.
        let now = at("2026-12-11T12:00:00Z");
        let next = Some(at("2026-12-12T03:00:00Z"));
        let once = schedule("0 3 * * *", "2026-12-08T03:00:00Z", Missed::RunOnce);
        assert_eq!(once.firing(&times, now), Firing::Fire { next_at: next });
        let skip = schedule("0 3 * * *", "2026-12-08T03:00:00Z", Missed::Skip);
        assert_eq!(skip.firing(&times, now), Firing::Skip { next_at: next });
        assert_eq!(Missed::parse("run-once"), Some(Missed::RunOnce));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_schedule_name("nightly-tests").is_ok());
        for bad in ["", "Nightly", "9am", "a b", &"a".repeat(41)] {
            assert!(check_schedule_name(bad).is_err(), "{bad:?}");
        }
    }
}
