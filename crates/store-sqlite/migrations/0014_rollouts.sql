-- Rolling replacement. Each published node says which version of its
-- pool's launch configuration it was made from (NULL: made before nodes
-- carried one).
ALTER TABLE nodes ADD COLUMN pool_version TEXT;

-- What holds a pool's rollout back: paused by an account (until resumed),
-- or stopped by the leader after replacements at stopped_version kept
-- failing (until resumed, or a new version of the pool). No row: nothing
-- holds it. Times are unix milliseconds.
CREATE TABLE pool_rollouts (
    pool            TEXT   PRIMARY KEY,
    paused_by       TEXT,
    paused_at       BIGINT,
    stopped_version TEXT,
    stopped_reason  TEXT,
    stopped_at      BIGINT
);
