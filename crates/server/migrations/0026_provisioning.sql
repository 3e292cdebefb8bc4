-- Provisioning (ADR 0025): policies that register devices by themselves,
-- the keys devices register with, each registration (an approval request
-- under a MANUAL policy), and the identities that recognise hardware again.

-- What people call the device; the name stays its identity.
ALTER TABLE devices ADD COLUMN display_name TEXT;
-- The policy that created the device; NULL when added by hand. No foreign
-- key: deleting a policy leaves its devices.
ALTER TABLE devices ADD COLUMN policy TEXT;

CREATE TABLE provisioning_policies (
    name TEXT PRIMARY KEY,
    -- JSON: mode, identityFieldPaths, template.
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE provisioning_keys (
    id TEXT PRIMARY KEY,
    policy TEXT NOT NULL REFERENCES provisioning_policies (name) ON DELETE CASCADE,
    -- SHA-256 of the secret, hex; the secret is shown once.
    secret_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    last_used_at BIGINT
);

CREATE INDEX provisioning_keys_policy ON provisioning_keys (policy);

CREATE TABLE registrations (
    id TEXT PRIMARY KEY,
    policy TEXT NOT NULL REFERENCES provisioning_policies (name) ON DELETE CASCADE,
    -- SHA-256 of the CSR's public key, hex: the same key asking again is
    -- the same registration.
    public_key_sha256 TEXT NOT NULL,
    -- JSON: the facts the device sent.
    facts TEXT NOT NULL,
    -- pending, approved, denied, registered.
    state TEXT NOT NULL,
    -- The device it became, or the existing one its identity matched.
    device TEXT,
    created_at BIGINT NOT NULL,
    decided_at BIGINT,
    decided_by TEXT,
    reason TEXT,
    UNIQUE (policy, public_key_sha256)
);

-- `tether approvals list`: by state, oldest first.
CREATE INDEX registrations_state ON registrations (state, created_at);

-- The hardware a policy's device runs on, by the policy's identity fields
-- (their paths and values as one key): a device registering again from
-- the same hardware with new media becomes the same device.
CREATE TABLE device_identities (
    policy TEXT NOT NULL REFERENCES provisioning_policies (name) ON DELETE CASCADE,
    identity_key TEXT NOT NULL,
    device TEXT NOT NULL REFERENCES devices (name) ON DELETE CASCADE,
    PRIMARY KEY (policy, identity_key)
);

CREATE INDEX device_identities_device ON device_identities (device);
