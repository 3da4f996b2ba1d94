-- Shared configs (a value many pools use, such as the image per region),
-- every version kept and none ever deleted. kind names the published
-- schema it follows (DRIVER/KIND); schema is that schema as it was at
-- creation, repeated on every version so each row stands alone. at is
-- unix milliseconds.
CREATE TABLE shared_configs (
    name       TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    schema     TEXT   NOT NULL,
    value      TEXT   NOT NULL,
    at         BIGINT NOT NULL,
    by_account TEXT   NOT NULL,
    PRIMARY KEY (name, version)
);
