-- Roles and service accounts (ADR 0026). Users keep their `role` column,
-- now one of admin, operator, viewer. Service accounts are scripts' and
-- CI's identities: a role, and API keys stored only as hashes, like
-- sessions. A revoked key stays until its account is deleted, so using it
-- is answered "revoked", not "unknown", and is audited.
CREATE TABLE service_accounts (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    account TEXT NOT NULL REFERENCES service_accounts (name) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    -- NULL: the key does not expire.
    expires_at BIGINT,
    -- Updated at most once a minute per key, as sessions are.
    last_used_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX api_keys_account ON api_keys (account);
