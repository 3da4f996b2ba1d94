-- Jobs (issue 13): one row a job, its attempts as a JSON array (each with
-- its pool, instance type, market, price, instance and times), version
-- counting its writes so that each is checked against the one read. Times
-- are unix milliseconds.
CREATE TABLE jobs (
    id           BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         TEXT    NOT NULL,
    document     TEXT    NOT NULL,
    submitted_by TEXT    NOT NULL,
    org          TEXT,
    priority     BIGINT  NOT NULL,
    state        TEXT    NOT NULL,
    reason       TEXT,
    cancel_by    TEXT,
    attempts     TEXT    NOT NULL,
    submitted_at BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL,
    version      BIGINT  NOT NULL
);

-- The queue: jobs not ended, in the order they run.
CREATE INDEX jobs_live ON jobs (priority DESC, submitted_at, id)
    WHERE state IN ('queued', 'starting', 'running');
CREATE INDEX jobs_by_submitter ON jobs (submitted_by, id);
