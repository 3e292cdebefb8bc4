-- Provisioning limits (ADR 0025, the review of issue 16).

-- The provisioning key a registration was made with: revoking the key
-- denies its pending requests, and one key fills only its share of the
-- approval queue. NULL for registrations made before it was recorded.
ALTER TABLE registrations ADD COLUMN key_id TEXT;
CREATE INDEX registrations_key ON registrations (key_id, state);

-- The identity a registration claimed (its policy's identity fields, as
-- device_identities keys them): several key pairs claiming one identity
-- within minutes are boards booted from one image, not new media.
ALTER TABLE registrations ADD COLUMN identity_key TEXT;
CREATE INDEX registrations_identity ON registrations (policy, identity_key, created_at);

-- The registrations a policy approved by itself in the current hour's
-- window (maxRegistrationsPerHour), counted with a conditional UPDATE of
-- this row, which also orders a policy's concurrent registrations.
ALTER TABLE provisioning_policies ADD COLUMN rate_window_start BIGINT NOT NULL DEFAULT 0;
ALTER TABLE provisioning_policies ADD COLUMN rate_window_count BIGINT NOT NULL DEFAULT 0;

-- maxDevices counts a policy's devices.
CREATE INDEX devices_policy ON devices (policy);
