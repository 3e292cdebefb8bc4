-- The management shell (ADR 0023): each user's SSH public keys, which
-- tetherd hands to the agent's embedded SSH server with every `ssh`
-- tunnel that user opens, and each device's shell password hash, when
-- password login is on for it (no row: off).
CREATE TABLE ssh_keys (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    name TEXT NOT NULL,
    -- One OpenSSH line: `type base64` (the comment goes to name).
    public_key TEXT NOT NULL,
    -- `SHA256:…`, as `ssh-keygen -l` prints it.
    fingerprint TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (username, fingerprint)
);

CREATE TABLE shell_passwords (
    device TEXT PRIMARY KEY REFERENCES devices (name) ON DELETE CASCADE,
    password_hash TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
