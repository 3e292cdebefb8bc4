-- Who changed what through the API, and who tried to log in or enroll.
CREATE TABLE audit (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    -- A username, or `device:<name>` for an enrollment.
    actor TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status BIGINT NOT NULL
);
CREATE INDEX audit_at ON audit (at);
