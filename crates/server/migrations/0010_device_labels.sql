-- Label selectors are answered in SQL: one row per label of a device. The
-- JSON `devices.labels` stays the source a device is read from (one row, no
-- join); this table is an index of it, written in the same transaction as
-- the device (create, label patch) and emptied with it (cascade).
-- Existing devices' labels are copied here by tetherd at start
-- (`Store::connect`): copying from JSON takes functions that differ
-- between SQLite and PostgreSQL, and this migration set is one for both.
CREATE TABLE device_labels (
    device TEXT NOT NULL REFERENCES devices (name) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (device, key)
);

-- `key=value` and `key in (…)`: the devices with that label, in name order.
CREATE INDEX device_labels_key_value ON device_labels (key, value, device);
