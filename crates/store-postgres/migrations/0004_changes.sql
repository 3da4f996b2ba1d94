-- The change feed, as SQLite's 0004. Rows are numbered by an identity
-- column, which never reuses a number; every writer takes the feed's
-- advisory lock before its insert and holds it to its commit, so numbers
-- are handed out in commit order (see `record_changes`).
CREATE TABLE changes (
    seq     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind    TEXT   NOT NULL,
    key     TEXT   NOT NULL,
    at      BIGINT NOT NULL,
    payload TEXT   NOT NULL
);
CREATE INDEX changes_key ON changes (key, seq);
CREATE INDEX changes_at ON changes (at);

-- An organisation's events are its changes of kind org.*: the ones kept so
-- far move into the feed, oldest first, and their table goes.
INSERT INTO changes (kind, key, at, payload)
    SELECT 'org.' || kind, org, at, json_build_object('message', message)::TEXT
    FROM org_events ORDER BY id;
DROP TABLE org_events;
