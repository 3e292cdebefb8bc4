-- Portable between SQLite and PostgreSQL: only TEXT, BIGINT and DOUBLE
-- PRECISION columns, times as BIGINT milliseconds since the Unix epoch, JSON
-- as TEXT, and keys that are names or computed ids (no AUTOINCREMENT/SERIAL).
-- Everything a device owns refers to it with ON DELETE CASCADE, so deleting
-- the device row removes its tokens, actions, events and metrics.

CREATE TABLE devices (
    name TEXT PRIMARY KEY,
    -- JSON object of label name to value.
    labels TEXT NOT NULL,
    presence TEXT NOT NULL,
    certificate_serial TEXT,
    last_seen BIGINT,
    agent_version TEXT,
    boot_id TEXT,
    status_seq BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE enrollment_tokens (
    token_hash TEXT PRIMARY KEY,
    device TEXT NOT NULL REFERENCES devices (name) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);

-- Cascading deletes look tokens up by device.
CREATE INDEX enrollment_tokens_device ON enrollment_tokens (device);

CREATE TABLE users (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL
);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL
);

CREATE INDEX sessions_username ON sessions (username);

CREATE TABLE actions (
    correlation_id TEXT PRIMARY KEY,
    device TEXT NOT NULL REFERENCES devices (name) ON DELETE CASCADE,
    -- Per-device order of acceptance, starting at 1.
    seq BIGINT NOT NULL,
    action TEXT NOT NULL,
    -- JSON, redacted.
    input TEXT NOT NULL,
    -- The full input encrypted for delivery; NULL once the action is terminal.
    sealed_input TEXT,
    state TEXT NOT NULL,
    status_code BIGINT,
    status_message TEXT,
    -- JSON.
    response TEXT,
    created_at BIGINT NOT NULL,
    delivered_at BIGINT,
    completed_at BIGINT,
    expires_at BIGINT NOT NULL,
    timeout_seconds BIGINT NOT NULL,
    -- Also the index for a device's actions in seq order (open, newest first).
    UNIQUE (device, seq)
);

-- The expiry sweep: pending actions by expires_at.
CREATE INDEX actions_state_expires_at ON actions (state, expires_at);
-- The timeout sweep: delivered actions by delivered_at.
CREATE INDEX actions_state_delivered_at ON actions (state, delivered_at);

CREATE TABLE events (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL REFERENCES devices (name) ON DELETE CASCADE,
    -- No foreign key: a device may answer an action tetherd no longer knows.
    correlation_id TEXT,
    event TEXT NOT NULL,
    status_code BIGINT NOT NULL,
    status_message TEXT NOT NULL,
    -- JSON.
    response TEXT NOT NULL,
    received_at BIGINT NOT NULL
);

CREATE INDEX events_device_received_at ON events (device, received_at);

CREATE TABLE metrics (
    device TEXT NOT NULL REFERENCES devices (name) ON DELETE CASCADE,
    sampled_at BIGINT NOT NULL,
    cpu_percent DOUBLE PRECISION NOT NULL,
    memory_used_bytes BIGINT NOT NULL,
    memory_total_bytes BIGINT NOT NULL,
    disk_used_bytes BIGINT NOT NULL,
    disk_total_bytes BIGINT NOT NULL,
    network_rx_bytes BIGINT NOT NULL,
    network_tx_bytes BIGINT NOT NULL,
    -- One sample per device and instant: a resent sample is stored once.
    PRIMARY KEY (device, sampled_at)
);
