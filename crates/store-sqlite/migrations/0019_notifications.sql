-- Notifications (issue 14): each account's subscriptions (a mail address
-- or a webhook, and the events wanted), the deliveries the leader's
-- notifier queues from the change feed (one per subscription and change:
-- a change is queued once however often the leader changes), and how far
-- the notifier has read the feed, moved in the same transaction as the
-- deliveries it queued.
CREATE TABLE subscriptions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    account         TEXT    NOT NULL,
    channel         TEXT    NOT NULL,
    target          TEXT    NOT NULL,
    secret          TEXT,
    events          TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    failures        BIGINT  NOT NULL,
    disabled_at     BIGINT,
    disabled_reason TEXT,
    last_sent_at    BIGINT
);
CREATE INDEX subscriptions_account ON subscriptions (account);

-- subscription 0 is the configuration's admin_email, which has no row.
CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription BIGINT  NOT NULL,
    seq          BIGINT,
    kind         TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    event        TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    attempts     BIGINT  NOT NULL,
    next_at      BIGINT  NOT NULL,
    last_error   TEXT,
    created_at   BIGINT  NOT NULL,
    finished_at  BIGINT,
    UNIQUE (subscription, seq)
);
CREATE INDEX deliveries_due ON deliveries (state, next_at);
CREATE INDEX deliveries_created_at ON deliveries (created_at);

CREATE TABLE notify_cursor (
    id  BIGINT PRIMARY KEY,
    seq BIGINT NOT NULL
);
