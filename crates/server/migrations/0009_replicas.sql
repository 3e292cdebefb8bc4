-- Several tetherd replicas on one database (issue 12, ADR 0009).

-- Each running replica holds a lease it renews; a replica whose lease
-- lapsed is taken over (its devices marked offline) and its row deleted.
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    api_url TEXT NOT NULL,
    -- Where devices reach this replica; handed to agents at enrollment.
    mqtt_url TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    -- The last renewal: the last moment the replica vouched for its sessions.
    renewed_at BIGINT NOT NULL,
    lease_expires_at BIGINT NOT NULL
);
CREATE INDEX replicas_lease_expires_at ON replicas (lease_expires_at);

-- The replica holding the device's MQTT session while it is online; only
-- that replica marks it offline when the session ends.
ALTER TABLE devices ADD COLUMN session_replica TEXT;
CREATE INDEX devices_session_replica ON devices (session_replica);

-- Before replicas, tetherd marked every device offline at start; a device
-- online now has no owner that could ever end its session.
UPDATE devices SET presence = 'offline' WHERE presence = 'online';

-- What every replica must agree on (the CA, the sealing key); the first
-- replica to start writes them.
CREATE TABLE cluster_settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
