-- The change feed: one row per change, written in the change's own
-- transaction. AUTOINCREMENT so a number is never reused, even after the
-- newest rows are pruned: a reader's position stays meaningful. The one
-- writer connection numbers rows in commit order.
CREATE TABLE changes (
    seq     INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    -- ChangeKind::as_str, `entity.verb`.
    kind    TEXT    NOT NULL,
    -- The name of the cluster, organisation or account.
    key     TEXT    NOT NULL,
    at      BIGINT  NOT NULL,
    -- A JSON object.
    payload TEXT    NOT NULL
);
CREATE INDEX changes_key ON changes (key, seq);
CREATE INDEX changes_at ON changes (at);

-- An organisation's events are its changes of kind org.*: the ones kept so
-- far move into the feed, oldest first, and their table goes.
INSERT INTO changes (kind, key, at, payload)
    SELECT 'org.' || kind, org, at, json_object('message', message)
    FROM org_events ORDER BY id;
DROP TABLE org_events;
