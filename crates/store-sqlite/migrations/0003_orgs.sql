-- Organisations (seed 001): members, capacity requests, budgets, costs.
-- Money is integer micro-dollars; times are unix milliseconds; days are
-- ISO dates (YYYY-MM-DD, UTC).

-- An organisation's cluster sleeps at zero nodes: the record stays while
-- it wants none. SQLite cannot alter a CHECK, so the table is rebuilt.
CREATE TABLE clusters_new (
    name          TEXT    NOT NULL PRIMARY KEY,
    is_public     BOOLEAN NOT NULL,
    node_capacity INTEGER NOT NULL CHECK (node_capacity >= 0),
    pool          TEXT    NOT NULL,
    expires_at    BIGINT,
    destroying    BOOLEAN NOT NULL,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    generation    BIGINT  NOT NULL CHECK (generation >= 1)
);
INSERT INTO clusters_new SELECT name, is_public, node_capacity, pool, expires_at, destroying,
                                created_at, updated_at, generation FROM clusters;
DROP TABLE clusters;
ALTER TABLE clusters_new RENAME TO clusters;
CREATE INDEX clusters_expires_at ON clusters (expires_at);

CREATE TABLE orgs (
    name               TEXT    NOT NULL PRIMARY KEY,
    min_nodes          INTEGER NOT NULL CHECK (min_nodes >= 0),
    max_nodes          INTEGER NOT NULL CHECK (max_nodes >= min_nodes),
    node_limit         INTEGER NOT NULL CHECK (node_limit >= max_nodes),
    pool               TEXT    NOT NULL,
    balance            BIGINT  NOT NULL,
    monthly_allowance  BIGINT  NOT NULL CHECK (monthly_allowance >= 0),
    max_balance        BIGINT  NOT NULL CHECK (max_balance >= 0),
    shutdown_threshold BIGINT  NOT NULL CHECK (shutdown_threshold >= 0),
    min_runway_secs    BIGINT  NOT NULL CHECK (min_runway_secs >= 0),
    -- The month the allowance was last credited, as year * 12 + month - 1.
    allowance_month    INTEGER,
    exhausted_at       BIGINT,
    accrued_until      BIGINT,
    created_at         BIGINT  NOT NULL
);

-- Owners, members, and those who asked to join (role 'pending').
CREATE TABLE org_people (
    org      TEXT   NOT NULL REFERENCES orgs (name) ON DELETE CASCADE,
    username TEXT   NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
    role     TEXT   NOT NULL CHECK (role IN ('owner', 'member', 'pending')),
    since    BIGINT NOT NULL,
    PRIMARY KEY (org, username)
);
CREATE INDEX org_people_username ON org_people (username);

CREATE TABLE capacity_requests (
    id         INTEGER NOT NULL PRIMARY KEY,
    org        TEXT    NOT NULL REFERENCES orgs (name) ON DELETE CASCADE,
    username   TEXT    NOT NULL,
    nodes      INTEGER NOT NULL CHECK (nodes >= 1),
    created_at BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL
);
CREATE INDEX capacity_requests_org ON capacity_requests (org);
CREATE INDEX capacity_requests_expires_at ON capacity_requests (expires_at);

-- Every change of a balance but spending, which is kept in costs (one row
-- per organisation, cluster, user and day, added to as the day goes) and
-- shown in the ledger as one entry per day.
CREATE TABLE ledger (
    id     INTEGER NOT NULL PRIMARY KEY,
    org    TEXT    NOT NULL REFERENCES orgs (name) ON DELETE CASCADE,
    at     BIGINT  NOT NULL,
    kind   TEXT    NOT NULL,
    amount BIGINT  NOT NULL,
    reason TEXT    NOT NULL,
    actor  TEXT
);
CREATE INDEX ledger_org ON ledger (org, at);

-- Cost by organisation, cluster, user ('' when no request kept the node)
-- and day.
CREATE TABLE costs (
    org      TEXT   NOT NULL REFERENCES orgs (name) ON DELETE CASCADE,
    cluster  TEXT   NOT NULL,
    username TEXT   NOT NULL,
    day      TEXT   NOT NULL,
    amount   BIGINT NOT NULL,
    PRIMARY KEY (org, cluster, day, username)
);

CREATE TABLE org_events (
    id      INTEGER NOT NULL PRIMARY KEY,
    org     TEXT    NOT NULL REFERENCES orgs (name) ON DELETE CASCADE,
    at      BIGINT  NOT NULL,
    kind    TEXT    NOT NULL,
    message TEXT    NOT NULL
);
CREATE INDEX org_events_org ON org_events (org, id);
