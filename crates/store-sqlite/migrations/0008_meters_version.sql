-- Raised by one in every transaction that changes the organisation's
-- meters, so a server that keeps them in memory between accrual passes
-- knows which organisations' copies are still exact (see
-- flotilla_store::meters::MeterCache).
ALTER TABLE orgs ADD COLUMN meters_version BIGINT NOT NULL DEFAULT 0;
