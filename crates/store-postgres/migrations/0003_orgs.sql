-- Organisations (seed 001): members, capacity requests, budgets, costs; as
-- SQLite's 0003. Money is integer micro-dollars; times are unix
-- milliseconds; days are ISO dates (YYYY-MM-DD, UTC).

-- An organisation's cluster sleeps at zero nodes: the record stays while
-- it wants none.
ALTER TABLE clusters DROP CONSTRAINT clusters_node_capacity_check;
ALTER TABLE clusters ADD CONSTRAINT clusters_node_capacity_check CHECK (node_capacity >= 0);

CREATE TABLE orgs (
    name               TEXT   NOT NULL PRIMARY KEY,
    min_nodes          BIGINT NOT NULL CHECK (min_nodes >= 0),
    max_nodes          BIGINT NOT NULL CHECK (max_nodes >= min_nodes),
    node_limit         BIGINT NOT NULL CHECK (node_limit >= max_nodes),
    pool               TEXT   NOT NULL,
    balance            BIGINT NOT NULL,
    monthly_allowance  BIGINT NOT NULL CHECK (monthly_allowance >= 0),
    max_balance        BIGINT NOT NULL CHECK (max_balance >= 0),
    shutdown_threshold BIGINT NOT NULL CHECK (shutdown_threshold >= 0),
    min_runway_secs    BIGINT NOT NULL CHECK (min_runway_secs >= 0),
    -- The month the allowance was last credited, as year * 12 + month - 1.
    allowance_month    BIGINT,
    exhausted_at       BIGINT,
    accrued_until      BIGINT,
    created_at         BIGINT NOT NULL
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
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org        TEXT   NOT NULL REFERENCES orgs (name) ON DELETE CASCADE,
    username   TEXT   NOT NULL,
    nodes      BIGINT NOT NULL CHECK (nodes >= 1),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX capacity_requests_org ON capacity_requests (org);
CREATE INDEX capacity_requests_expires_at ON capacity_requests (expires_at);

-- Every change of a balance but spending, which is kept in costs.
CREATE TABLE ledger (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org    TEXT   NOT NULL REFERENCES orgs (name) ON DELETE CASCADE,
    at     BIGINT NOT NULL,
    kind   TEXT   NOT NULL,
    amount BIGINT NOT NULL,
    reason TEXT   NOT NULL,
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
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org     TEXT   NOT NULL REFERENCES orgs (name) ON DELETE CASCADE,
    at      BIGINT NOT NULL,
    kind    TEXT   NOT NULL,
    message TEXT   NOT NULL
);
CREATE INDEX org_events_org ON org_events (org, id);
