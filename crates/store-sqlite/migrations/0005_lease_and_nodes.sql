-- The leader's lease: one row per lease (only 'leader' so far). Each take
-- begins a term with the next epoch; the leader's writes carry their term's
-- epoch and are refused once it is not this row's. Times are unix
-- milliseconds.
CREATE TABLE leases (
    name       TEXT   NOT NULL PRIMARY KEY,
    holder     TEXT   NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- What the leader observes of each cluster's nodes, published for every
-- server to answer STATUS from. A copy: decisions are made from the cloud's
-- own listing. No foreign key: a cluster without a record can still have
-- nodes being destroyed.
CREATE TABLE nodes (
    cluster       TEXT   NOT NULL,
    id            TEXT   NOT NULL,
    instance_type TEXT   NOT NULL,
    launched_at   BIGINT NOT NULL,
    -- NodeState::as_str.
    state         TEXT   NOT NULL,
    state_since   BIGINT NOT NULL,
    address       TEXT,
    PRIMARY KEY (cluster, id)
);
