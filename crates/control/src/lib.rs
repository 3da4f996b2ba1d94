//! The front door: every command a person (or, later, a drop box or a
//! schedule) gives flotilla, and the questions they ask of it.
//!
//! A command is one of a closed set of types ([`Command`], sealed). Each is
//! validated once, authorised once by the domain's rules, and written in
//! one store transaction together with its row in the change feed; then
//! [`Control::run`] waits until this server's copies have read the feed up
//! to it, so the view it answers with (and the caller's next question)
//! shows what it wrote. The front door never calls a driver and never
//! pokes the engine's loops: the leader's reflector reads the same change
//! from the feed, whichever server took the command, and acts on it.
//!
//! Questions (status, lists, organisations, the ledger, the feed) are
//! plain methods, answered from the engine's copies or the store.

mod catalog;
mod clusters;
mod events;
mod jobs;
mod nodes;
mod notify;
mod orgs;
mod pools;
mod rollouts;
mod schedules;
mod shared;

use std::future::Future;
use std::sync::Arc;

use flotilla_domain::{Caller, PoolName};
use flotilla_engine::{Engine, EngineError};

pub use catalog::{part_schema, NoSection, PoolCatalog, PoolDriver};
pub use clusters::{Deploy, Destroy, Extend};
pub use events::{EventPage, EventsQuery, MAX_PAGE};
pub use jobs::{
    submitter, AgentAnswer, AgentProgram, AgentReport, AttemptWork, CancelJob, JobView, LogPage,
    RunTemplate, SubmitJob, WarmAssignment, MAX_JOBS, MAX_KEPT_BYTES, MAX_KEPT_FILES,
    SERVER_SUBMITTER,
};
pub use nodes::{Console, ExecOutput, MAX_CONSOLE_BYTES, MAX_EXEC_OUTPUT, MAX_EXEC_TIMEOUT};
pub use notify::{AddSubscription, ChangeSubscription, SubscriptionAction, TestSubscription};
pub use orgs::{
    CapacityView, CreateOrg, CreditOrg, DecideMembership, OrgView, RemoveMember, RequestCapacity,
    RequestMembership, SetMemberRole, UpdateOrg, WithdrawCapacity,
};
pub use pools::{
    ApplyOutcome, ApplyPool, PoolApplied, PoolDetail, PoolVersion, RetirePool, MAX_POOL_ERRORS,
};
pub use rollouts::{ClusterReplacement, PauseRollout, PoolRollout, ResumeRollout};
pub use schedules::{CreateSchedule, DeleteSchedule, PauseSchedule};
pub use shared::{SharedConfigView, WriteSharedConfig};

mod sealed {
    pub trait Sealed {}
}

/// A command: something that changes desired state. The set is closed;
/// each type says what it answers with.
pub trait Command: sealed::Sealed + Send {
    /// What the commit leaves for the answer (the cluster, the
    /// organisation as written, ...).
    type Committed: Send;
    /// What the command answers with.
    type View: Send;
    /// The command's name in logs.
    const NAME: &'static str;

    /// Validates, authorises and commits the command: one transaction,
    /// with its change.
    fn commit(
        self,
        control: &Control,
        caller: &Caller,
    ) -> impl Future<Output = Result<Self::Committed, EngineError>> + Send;

    /// The answer, built once this server has read the feed up to the
    /// commit.
    fn answer(
        committed: Self::Committed,
        control: &Control,
    ) -> impl Future<Output = Result<Self::View, EngineError>> + Send;
}

/// The front door. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    engine: Engine,
    catalog: Arc<PoolCatalog>,
    /// Where jobs' logs are kept.
    artifacts: Option<Arc<dyn flotilla_store::ArtifactStore>>,
    /// The program attempts' instances fetch as their agent.
    agent: Option<Arc<AgentProgram>>,
    /// Whether this server's leader sends mail (`[notify.smtp]`): mail
    /// subscriptions are refused if not.
    mail: bool,
}

impl Control {
    /// The front door to `engine`, checking pools written through it
    /// against `catalog` (the configured drivers').
    pub fn new(engine: Engine, catalog: Arc<PoolCatalog>) -> Self {
        Self {
            engine,
            catalog,
            artifacts: None,
            agent: None,
            mail: false,
        }
    }

    /// Takes mail subscriptions: the servers send mail.
    pub fn with_mail(mut self, mail: bool) -> Self {
        self.mail = mail;
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Runs one command: refused while the server shuts down; committed;
    /// answered once this server's copies hold what it wrote (which also
    /// wakes the loops, if this server leads).
    pub async fn run<C: Command>(
        &self,
        caller: &Caller,
        command: C,
    ) -> Result<C::View, EngineError> {
        if self.engine.is_stopping() {
            return Err(EngineError::ShuttingDown);
        }
        let committed = command.commit(self, caller).await.inspect_err(|e| {
            tracing::debug!(command = C::NAME, error = %e, "command refused");
        })?;
        self.engine.catch_up().await;
        C::answer(committed, self).await
    }

    /// Who a write is recorded as made by: the caller's account, or the
    /// server itself.
    pub(crate) fn writer(caller: &Caller) -> String {
        caller
            .account
            .as_ref()
            .map_or_else(|| "server".to_owned(), ToString::to_string)
    }

    pub(crate) fn unknown_pool(&self, pool: &str) -> EngineError {
        EngineError::UnknownPool {
            pool: pool.to_owned(),
            known: self
                .engine
                .pools()
                .iter()
                .map(PoolName::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// A pool the caller named, if it is configured.
    pub(crate) fn known_pool(&self, pool: &str) -> Result<PoolName, EngineError> {
        match PoolName::new(pool) {
            Ok(name) if self.engine.pool(&name).is_some() => Ok(name),
            _ => Err(self.unknown_pool(pool)),
        }
    }
}
