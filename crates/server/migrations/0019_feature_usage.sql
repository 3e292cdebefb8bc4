-- Bytes per feature, as both ends count them (issue 13, ADR 0015).

-- Of a spool's wire bytes, those of batches the device marked as sent
-- from its backlog after a reconnect.
ALTER TABLE telemetry_cursors ADD COLUMN replay_bytes BIGINT NOT NULL DEFAULT 0;
-- The spool's totals of records the spec's budget did not let through,
-- apart from those it dropped when full.
ALTER TABLE telemetry_cursors ADD COLUMN over_budget_total BIGINT NOT NULL DEFAULT 0;
-- JSON array of 8 counts, by log priority.
ALTER TABLE telemetry_cursors ADD COLUMN over_budget_by_priority TEXT NOT NULL DEFAULT '[0,0,0,0,0,0,0,0]';
-- The agent's own counts per feature (JSON), as the last batch of this
-- spool that carried them, and when it came.
ALTER TABLE telemetry_cursors ADD COLUMN agent_usage TEXT;
ALTER TABLE telemetry_cursors ADD COLUMN agent_usage_at BIGINT;

-- Action requests tetherd sent the device and answers it received, in
-- payload bytes; written with `last_seen`.
ALTER TABLE devices ADD COLUMN action_bytes_sent BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN action_bytes_received BIGINT NOT NULL DEFAULT 0;
