-- Pools written through the API (flotilla_domain::PoolDocument as JSON),
-- every version kept: a pool is its latest row, and a row without a
-- document retired it. Pools of the config file are not stored. at is unix
-- milliseconds; schema_version is the document's (POOL_SCHEMA_VERSION).
CREATE TABLE pools (
    name           TEXT    NOT NULL,
    version        BIGINT  NOT NULL,
    document       TEXT,
    schema_version BIGINT  NOT NULL,
    at             BIGINT  NOT NULL,
    by_account     TEXT    NOT NULL,
    PRIMARY KEY (name, version)
);
