-- What stands in each cluster's way, as the leader last met it (see
-- flotilla_domain::Obstacle), published for every server's STATUS.
-- Times are unix milliseconds. Removed with the cluster's record.
CREATE TABLE obstacles (
    cluster  TEXT   NOT NULL PRIMARY KEY,
    code     TEXT   NOT NULL,
    message  TEXT   NOT NULL,
    since    BIGINT NOT NULL,
    last_at  BIGINT NOT NULL,
    count    BIGINT NOT NULL CHECK (count > 0),
    retry_at BIGINT
);
