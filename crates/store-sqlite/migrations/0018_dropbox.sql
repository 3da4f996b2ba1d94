-- Drop-box triggers handled (issue 14): a row per trigger, by its path
-- under the drop box and the digest of its content, so each is acted on
-- once however often it is seen, and what came of it is known after a
-- crash. Old rows are forgotten (their files are long gone).
CREATE TABLE dropbox_triggers (
    path       TEXT   NOT NULL,
    digest     TEXT   NOT NULL,
    account    TEXT   NOT NULL,
    cluster    TEXT   NOT NULL,
    outcome    TEXT   NOT NULL,
    message    TEXT   NOT NULL,
    handled_at BIGINT NOT NULL,
    PRIMARY KEY (path, digest)
);
CREATE INDEX dropbox_triggers_handled_at ON dropbox_triggers (handled_at);
