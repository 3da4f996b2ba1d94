-- What a cluster's nodes run, as its owner gave it at deploy
-- (flotilla_domain::Workload as JSON: command, port); NULL: the pool's
-- init data. Fixed once deployed.
ALTER TABLE clusters ADD COLUMN workload TEXT;
