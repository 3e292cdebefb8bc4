-- Sessions get an id an admin can list and revoke them by (the token hash
-- is never shown), and the times `tether sessions list` shows. Existing
-- sessions are dropped: their users log in again once after the upgrade.
DROP TABLE sessions;
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    -- Updated at most once a minute per session.
    last_used_at BIGINT NOT NULL
);
CREATE INDEX sessions_username ON sessions (username);
-- Expired sessions are pruned by time.
CREATE INDEX sessions_expires_at ON sessions (expires_at);
-- Retention deletes finished actions by completion time.
CREATE INDEX actions_completed_at ON actions (completed_at);
