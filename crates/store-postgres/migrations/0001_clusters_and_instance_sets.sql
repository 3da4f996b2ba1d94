-- Desired state only: what the cloud runs is read from the cloud.
--
-- The PostgreSQL schema mirrors SQLite's (crates/store-sqlite/migrations)
-- migration for migration and column for column, so the two backends share
-- one row encoding: times are BIGINT unix milliseconds, and every integer
-- is BIGINT (sqlx decodes PostgreSQL's INTEGER as i32 and SQLite's as i64).

CREATE TABLE clusters (
    name          TEXT    NOT NULL PRIMARY KEY,
    is_public     BOOLEAN NOT NULL,
    node_capacity BIGINT  NOT NULL CHECK (node_capacity >= 1),
    pool          TEXT    NOT NULL,
    -- Unix milliseconds of the scheduled deletion; NULL once destroying.
    expires_at    BIGINT,
    destroying    BOOLEAN NOT NULL,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    generation    BIGINT  NOT NULL CHECK (generation >= 1)
);

-- The TTL timer asks for MIN(expires_at) and for every row due at a time.
CREATE INDEX clusters_expires_at ON clusters (expires_at);

-- One ownership ID per driver, created once and never changed: instances in
-- the cloud are tagged with it, so changing it would orphan them.
CREATE TABLE instance_sets (
    driver     TEXT   NOT NULL PRIMARY KEY,
    id         TEXT   NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
