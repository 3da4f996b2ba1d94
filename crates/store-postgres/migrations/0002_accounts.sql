-- Accounts, the clusters an admin granted them, and refresh tokens; as
-- SQLite's 0002. `kind` and `level` are the domain's names, checked when
-- read.

CREATE TABLE accounts (
    username      TEXT   NOT NULL PRIMARY KEY,
    kind          TEXT   NOT NULL,
    level         TEXT   NOT NULL,
    -- The argon2id PHC string of a local account; NULL for GitHub accounts.
    password_hash TEXT,
    created_at    BIGINT NOT NULL
);

-- No reference to clusters: a grant may name a cluster that does not exist
-- yet, and outlives the cluster's record.
CREATE TABLE grants (
    username TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
    cluster  TEXT NOT NULL,
    PRIMARY KEY (username, cluster)
);

-- Only the hex SHA-256 of a token's secret is stored. A token is live while
-- used_at and revoked_at are NULL and expires_at is in the future.
CREATE TABLE refresh_tokens (
    id         TEXT   NOT NULL PRIMARY KEY,
    username   TEXT   NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
    family     TEXT   NOT NULL,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    revoked_at BIGINT
);

CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_username ON refresh_tokens (username);
