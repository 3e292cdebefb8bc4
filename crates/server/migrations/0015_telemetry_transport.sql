-- Telemetry batches from the devices' spools (docs/device-contract.md).

-- Log lines, kept in the order each device's spool numbered them.
CREATE TABLE logs (
    device TEXT NOT NULL REFERENCES devices (name) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    -- The record's number in its spool: orders lines of one instant.
    seq BIGINT NOT NULL,
    priority BIGINT NOT NULL,
    unit TEXT NOT NULL,
    message TEXT NOT NULL,
    -- JSON object of strings.
    fields TEXT NOT NULL
);

CREATE INDEX logs_device_at ON logs (device, at);
-- Retention deletes old lines of every device by time.
CREATE INDEX logs_at ON logs (at);

-- Named values applications push through the agent's local API.
CREATE TABLE custom_metrics (
    device TEXT NOT NULL REFERENCES devices (name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    at BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    -- JSON object of strings.
    labels TEXT NOT NULL
);

CREATE INDEX custom_metrics_device_name_at ON custom_metrics (device, name, at);
CREATE INDEX custom_metrics_at ON custom_metrics (at);

-- Where each spool of each device stands: the next sequence number tetherd
-- expects, so a batch sent again is stored once, and what the device sent
-- and dropped. One row per spool: a device whose spool was wiped starts a
-- new one, and batches of the old one still find theirs.
CREATE TABLE telemetry_cursors (
    device TEXT NOT NULL REFERENCES devices (name) ON DELETE CASCADE,
    stream TEXT NOT NULL,
    spool_id TEXT NOT NULL,
    next_seq BIGINT NOT NULL,
    -- Sequence numbers skipped by a batch that came after a gap.
    gap BIGINT NOT NULL DEFAULT 0,
    stored_records BIGINT NOT NULL DEFAULT 0,
    duplicate_records BIGINT NOT NULL DEFAULT 0,
    batches BIGINT NOT NULL DEFAULT 0,
    -- Compressed bytes as they came over the wire, duplicates included.
    wire_bytes BIGINT NOT NULL DEFAULT 0,
    -- The spool's own totals of records it dropped when full.
    dropped_total BIGINT NOT NULL DEFAULT 0,
    -- JSON array of 8 counts, by log priority.
    dropped_by_priority TEXT NOT NULL DEFAULT '[0,0,0,0,0,0,0,0]',
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (device, stream, spool_id)
);
