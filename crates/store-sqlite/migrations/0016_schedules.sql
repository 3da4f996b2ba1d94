-- Schedules (issue 13): a job template run against a cluster on a cron
-- schedule. The record is the schedule as JSON (its next time among it);
-- revision counts its writes, each checked against the one read, so a
-- schedule fires once however many servers race.
CREATE TABLE schedules (
    name     TEXT   PRIMARY KEY,
    record   TEXT   NOT NULL,
    revision BIGINT NOT NULL
);
