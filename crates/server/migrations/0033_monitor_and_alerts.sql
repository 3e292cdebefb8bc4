-- The fleet monitor (issue 18, ADR 0032). A watch row exists only while a
-- device is being asked for a rebirth or has its silence alert raised: the
-- monitor's state survives a change of leader.
CREATE TABLE monitor_watches (
    device TEXT PRIMARY KEY REFERENCES devices (name) ON DELETE CASCADE,
    rebirths_sent BIGINT NOT NULL,
    last_request_at BIGINT,
    -- 1 while the silence alert is raised.
    alerting BIGINT NOT NULL
);

-- Alerts: one row per condition on one device, kept after it resolves.
-- A condition (rule, device) has at most one alert not yet resolved: the
-- unique index makes raising it twice (two leaders overlapping) a no-op.
CREATE TABLE alerts (
    id BIGINT PRIMARY KEY,
    rule TEXT NOT NULL,
    device TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    summary TEXT NOT NULL,
    -- JSON object of labels.
    labels TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    acknowledged_at BIGINT,
    acknowledged_by TEXT,
    resolved_at BIGINT
);

CREATE UNIQUE INDEX alerts_active ON alerts (rule, device) WHERE resolved_at IS NULL;
CREATE INDEX alerts_state ON alerts (state, id);
