-- Accounts, the clusters an admin granted them, and refresh tokens.
--
-- The same conventions as 0001: SQL that PostgreSQL accepts as written,
-- times as BIGINT unix milliseconds. `kind` and `level` are the domain's
-- names (`AccountKind::as_str`, `Level::as_str`) and are checked when read,
-- not by CHECK constraints, so a new level needs no table rebuild (SQLite
-- cannot alter a constraint in place).

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

-- Reuse and logout revoke a whole family; an admin revokes a user's tokens,
-- and deleting an account cascades through username.
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_username ON refresh_tokens (username);
