-- The device list sorted by when devices were last seen (the console's
-- sortable column, `GET /devices?sort=lastSeen`): keyset pages walk this
-- index in either direction. A device never seen sorts as time 0, so the
-- key is never NULL (SQLite and PostgreSQL order NULLs differently).
CREATE INDEX devices_last_seen_name ON devices ((COALESCE(last_seen, 0)), name);
