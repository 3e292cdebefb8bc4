-- Sealed secrets (issue 17, ADR 0030): each device's public sealing key as
-- its agent reports it, each secret's target, and the value sealed to
-- each targeted device's key. The plaintext is never stored.

CREATE TABLE device_sealing_keys (
    device TEXT PRIMARY KEY REFERENCES devices (name) ON DELETE CASCADE,
    -- Base64 of the 32-byte X25519 public key.
    public_key TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    -- JSON: device or selector.
    target TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The value sealed to one device, and the key it was sealed to: a device
-- whose key changed since holds a copy it cannot open (stale).
CREATE TABLE secret_ciphertexts (
    secret TEXT NOT NULL REFERENCES secrets (name) ON DELETE CASCADE,
    device TEXT NOT NULL REFERENCES devices (name) ON DELETE CASCADE,
    public_key TEXT NOT NULL,
    ciphertext TEXT NOT NULL,
    PRIMARY KEY (secret, device)
);

CREATE INDEX secret_ciphertexts_device ON secret_ciphertexts (device);
