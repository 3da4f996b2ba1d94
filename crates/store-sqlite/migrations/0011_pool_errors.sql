-- What went wrong making each pool's nodes (flotilla_domain::PoolError):
-- one row per failure, its count the times met, its message the latest.
-- code is '' for a timeout (it is part of the key). Times are unix
-- milliseconds; rows last met longer ago than the feed's retention go.
CREATE TABLE pool_errors (
    pool          TEXT   NOT NULL,
    kind          TEXT   NOT NULL,
    code          TEXT   NOT NULL,
    cluster       TEXT   NOT NULL,
    instance_type TEXT   NOT NULL,
    message       TEXT   NOT NULL,
    count         BIGINT NOT NULL,
    first_at      BIGINT NOT NULL,
    last_at       BIGINT NOT NULL,
    PRIMARY KEY (pool, kind, code, cluster, instance_type)
);
CREATE INDEX pool_errors_last_at ON pool_errors (last_at);
