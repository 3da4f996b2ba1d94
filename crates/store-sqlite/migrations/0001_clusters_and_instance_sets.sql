-- Desired state only: what the cloud runs is read from the cloud.
--
-- Kept to SQL that PostgreSQL accepts as written (BIGINT unix milliseconds
-- for times, BOOLEAN, no SQLite-only functions) so its backend's schema can
-- mirror this one column for column.

CREATE TABLE clusters (
    name          TEXT    NOT NULL PRIMARY KEY,
    is_public     BOOLEAN NOT NULL,
    node_capacity INTEGER NOT NULL CHECK (node_capacity >= 1),
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
