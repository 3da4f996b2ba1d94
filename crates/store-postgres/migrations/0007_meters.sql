-- Every node of an organisation's cluster, charged from its launch until a
-- listing no longer showed it (see flotilla_store::meters). Times are unix
-- milliseconds, price micro-dollars per node-hour.
CREATE TABLE meters (
    org           TEXT    NOT NULL REFERENCES orgs (name) ON DELETE CASCADE,
    id            TEXT    NOT NULL,
    launched_at   BIGINT  NOT NULL,
    price         BIGINT  NOT NULL CHECK (price >= 0),
    -- Charged from the launch up to here; NULL: nothing charged yet, or
    -- following.
    charged_until BIGINT,
    -- Charged up to the organisation's accrued_until, as every running
    -- node is once a pass has charged it: a pass then writes no row per
    -- node. An end makes the charge explicit again.
    follows       BOOLEAN NOT NULL DEFAULT FALSE,
    ended_at      BIGINT,
    -- NodeEndSeen::as_str: 'gone' or 'unwatched'; NULL while it runs.
    ended         TEXT CHECK (ended IN ('gone', 'unwatched')),
    -- Ended and charged to its end.
    settled       BOOLEAN NOT NULL,
    PRIMARY KEY (org, id),
    CHECK ((ended_at IS NULL) = (ended IS NULL))
);
CREATE INDEX meters_unsettled ON meters (org) WHERE NOT settled;

-- Before meters, each pass charged the nodes it listed up to
-- accrued_until: a node already running then is metered from there.
ALTER TABLE orgs ADD COLUMN metered_from BIGINT;
UPDATE orgs SET metered_from = accrued_until;
