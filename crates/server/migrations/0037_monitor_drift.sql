-- Configuration drift (issue 18, ADR 0032): a row exists only while a
-- device is behind its spec and was asked to reload, or has its drift
-- alert raised, so the monitor's state survives a change of leader.
CREATE TABLE monitor_drift (
    device TEXT PRIMARY KEY REFERENCES devices (name) ON DELETE CASCADE,
    reloads_sent BIGINT NOT NULL,
    last_reload_at BIGINT,
    -- 1 while the drift alert is raised.
    alerting BIGINT NOT NULL
);
