-- Agent releases (issue 19, ADR 0033): one row per version and platform
-- with what tetherd signed, and the binary in chunks of 1 MiB, so a
-- ranged download reads only the chunks it needs and no row is larger
-- than a chunk (SQLite BLOB, PostgreSQL BYTEA: SQLite takes any type name).
CREATE TABLE agent_releases (
    version TEXT NOT NULL,
    platform TEXT NOT NULL,
    -- Lowercase hex SHA-256 of the binary.
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    -- Base64 Ed25519 signature of the signed message (version, platform,
    -- sha256, size).
    signature TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (version, platform)
);

CREATE TABLE agent_release_chunks (
    version TEXT NOT NULL,
    platform TEXT NOT NULL,
    -- The chunk's index: it holds bytes [seq * 1 MiB, (seq + 1) * 1 MiB).
    seq BIGINT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (version, platform, seq),
    FOREIGN KEY (version, platform) REFERENCES agent_releases (version, platform) ON DELETE CASCADE
);
