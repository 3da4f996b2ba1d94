-- A job attempt's instance is metered like a node of its organisation's
-- cluster (issue 13): `job` names the attempt (JOB/ATTEMPT), and the
-- instance is charged to `charged_to`, who submitted the job (NULL: the
-- server, charged to the organisation itself). A cluster's publication
-- moves only the meters whose `job` is NULL.
ALTER TABLE meters ADD COLUMN job TEXT;
ALTER TABLE meters ADD COLUMN charged_to TEXT;
