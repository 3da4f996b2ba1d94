//! Subscriptions (issue 14): an account asks to hear of the changes it
//! may read, by mail or webhook. Adding, removing, enabling and testing
//! one are commands; the leader's notifier (in the binary) queues and
//! sends the deliveries.

use flotilla_domain::{test_event, Caller, Channel, Denied, Pattern, MAX_SUBSCRIPTIONS};
use flotilla_engine::EngineError;
use flotilla_store::{Delivery, NewSubscription, Subscription};

use crate::{sealed, Command, Control};

/// Subscribe the caller's account: mail to `email` or POSTs to `webhook`
/// (exactly one) of the events `events` names.
#[derive(Debug, Clone)]
pub struct AddSubscription {
    pub email: Option<String>,
    pub webhook: Option<String>,
    pub events: String,
}

impl sealed::Sealed for AddSubscription {}

impl Command for AddSubscription {
    type Committed = Subscription;
    type View = Subscription;
    const NAME: &'static str = "add subscription";

    async fn commit(self, control: &Control, caller: &Caller) -> Result<Subscription, EngineError> {
        let account = account(caller)?;
        let patterns =
            Pattern::parse_list(&self.events).map_err(EngineError::InvalidSubscription)?;
        let channel = match (self.email, self.webhook) {
            (Some(e), None) => {
                if !control.mail {
                    return Err(EngineError::InvalidSubscription(
                        "this server sends no mail ([notify.smtp] is not configured): \
                         subscribe a webhook, or ask an admin to configure a mail relay"
                            .to_owned(),
                    ));
                }
                Channel::email(&e)
            }
            (None, Some(w)) => Channel::webhook(&w),
            _ => Err("name one of email or webhook".to_owned()),
        }
        .map_err(EngineError::InvalidSubscription)?;
        let store = control.engine().store();
        let mine = store.subscriptions(Some(&account)).await?;
        if mine.len() >= MAX_SUBSCRIPTIONS {
            return Err(EngineError::InvalidSubscription(format!(
                "{account} has {MAX_SUBSCRIPTIONS} subscriptions, the most an account may: \
                 remove one first (`flotilla notify list` shows them)"
            )));
        }
        if mine
            .iter()
            .any(|s| s.channel == channel && s.patterns == patterns)
        {
            return Err(EngineError::InvalidSubscription(format!(
                "{account} is subscribed to {} for these events already",
                channel.target()
            )));
        }
        let secret = match channel {
            Channel::Webhook(_) => Some(secret()?),
            Channel::Email(_) => None,
        };
        let new = NewSubscription {
            account,
            channel,
            patterns,
            secret,
        };
        let added = store.add_subscription(&new, control.engine().now()).await?;
        tracing::info!(subscription = added.id, account = %added.account, channel = added.channel.kind(), "subscription added");
        Ok(added)
    }

    async fn answer(added: Subscription, _: &Control) -> Result<Subscription, EngineError> {
        Ok(added)
    }
}

/// What to do to one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionAction {
    Remove,
    /// Enable it again after it was disabled for failing.
    Enable,
}

/// Remove or enable a subscription: its account's, or any (admins).
#[derive(Debug, Clone)]
pub struct ChangeSubscription {
    pub id: i64,
    pub action: SubscriptionAction,
}

impl sealed::Sealed for ChangeSubscription {}

impl Command for ChangeSubscription {
    type Committed = ();
    type View = ();
    const NAME: &'static str = "change subscription";

    async fn commit(self, control: &Control, caller: &Caller) -> Result<(), EngineError> {
        control.subscription(caller, self.id).await?;
        let store = control.engine().store();
        let done = match self.action {
            SubscriptionAction::Remove => store.remove_subscription(self.id).await?,
            SubscriptionAction::Enable => store.enable_subscription(self.id).await?,
        };
        if !done {
            return Err(EngineError::UnknownSubscription(self.id));
        }
        Ok(())
    }

    async fn answer((): (), _: &Control) -> Result<(), EngineError> {
        Ok(())
    }
}

/// Queue a test delivery to a subscription, sent as soon as the leader's
/// notifier sees it (a disabled subscription's too: that is how its
/// account finds out whether it works again).
#[derive(Debug, Clone)]
pub struct TestSubscription {
    pub id: i64,
}

impl sealed::Sealed for TestSubscription {}

impl Command for TestSubscription {
    type Committed = Delivery;
    type View = Delivery;
    const NAME: &'static str = "test subscription";

    async fn commit(self, control: &Control, caller: &Caller) -> Result<Delivery, EngineError> {
        control.subscription(caller, self.id).await?;
        let now = control.engine().now();
        control
            .engine()
            .store()
            .queue_test(self.id, &test_event(self.id, now), now)
            .await?
            .ok_or(EngineError::UnknownSubscription(self.id))
    }

    async fn answer(queued: Delivery, _: &Control) -> Result<Delivery, EngineError> {
        Ok(queued)
    }
}

impl Control {
    /// The caller's subscriptions; every account's for an admin who asks
    /// for `all`.
    pub async fn subscriptions(
        &self,
        caller: &Caller,
        all: bool,
    ) -> Result<Vec<Subscription>, EngineError> {
        let account = scope(caller, all)?;
        Ok(self
            .engine()
            .store()
            .subscriptions(account.as_deref())
            .await?)
    }

    /// Subscription `id`, if the caller may see it (its account, admins);
    /// another's is as unknown as one that does not exist.
    pub async fn subscription(
        &self,
        caller: &Caller,
        id: i64,
    ) -> Result<Subscription, EngineError> {
        let mine = if caller.is_admin() {
            None
        } else {
            Some(account(caller)?)
        };
        self.engine()
            .store()
            .subscriptions(mine.as_deref())
            .await?
            .into_iter()
            .find(|s| s.id == id)
            .ok_or(EngineError::UnknownSubscription(id))
    }

    /// The latest `limit` deliveries to the caller's subscriptions (every
    /// one, the admin mail's included, for an admin who asks for `all`),
    /// the newest first.
    pub async fn deliveries(
        &self,
        caller: &Caller,
        all: bool,
        limit: usize,
    ) -> Result<Vec<Delivery>, EngineError> {
        let account = scope(caller, all)?;
        Ok(self
            .engine()
            .store()
            .deliveries(account.as_deref(), limit)
            .await?)
    }
}

/// Whose subscriptions (or deliveries) a question is about: every
/// account's (none) for an admin who asks for `all`, else the caller's.
fn scope(caller: &Caller, all: bool) -> Result<Option<String>, EngineError> {
    if all && caller.is_admin() {
        Ok(None)
    } else {
        account(caller).map(Some)
    }
}

/// The caller's account: a subscription is an account's.
fn account(caller: &Caller) -> Result<String, EngineError> {
    caller
        .account
        .as_ref()
        .map(ToString::to_string)
        .ok_or(EngineError::Denied(Denied::NotAuthenticated))
}

/// A webhook's signing secret: 32 random bytes, in hex.
fn secret() -> Result<String, EngineError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| {
        EngineError::InvalidSubscription(format!("cannot make a secret for it: {e}"))
    })?;
    Ok(flotilla_domain::hex(&bytes))
}
