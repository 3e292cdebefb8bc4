-- Metrics as series (docs/adr/0014-metric-series-and-rollups.md): each host
-- sample and custom metric is flattened into points of named, labelled
-- series; raw points are kept a day, 1-minute and 1-hour rollups longer.

-- One row per series of a device. The id is derived from (device, name,
-- labels) by tetherd (a 64-bit hash), so ingest needs no lookup. The newest
-- point is kept on the row: the latest values and the fleet exposition
-- read nothing else.
CREATE TABLE metric_series (
    id BIGINT PRIMARY KEY,
    device TEXT NOT NULL REFERENCES devices (name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    -- JSON object of strings, keys sorted.
    labels TEXT NOT NULL,
    last_at BIGINT NOT NULL,
    last_value DOUBLE PRECISION NOT NULL
);

CREATE INDEX metric_series_device_name ON metric_series (device, name);
-- The fleet exposition pages through every series grouped by name.
CREATE INDEX metric_series_name_id ON metric_series (name, id);
CREATE INDEX metric_series_last_at ON metric_series (last_at);

-- Raw points. received_at is tetherd's clock when the point was stored:
-- rollups find the buckets to compute by it (so points a device sends
-- late are rolled up too), and the raw retention counts from it.
CREATE TABLE metric_points (
    series_id BIGINT NOT NULL REFERENCES metric_series (id) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (series_id, at)
);

CREATE INDEX metric_points_received_at ON metric_points (received_at);

-- Rollups: per series and bucket (its start, in ms) of `resolution` ms
-- (60000 or 3600000), the sum, min, max and count of its points.
CREATE TABLE metric_rollups (
    series_id BIGINT NOT NULL REFERENCES metric_series (id) ON DELETE CASCADE,
    resolution BIGINT NOT NULL,
    bucket BIGINT NOT NULL,
    sum DOUBLE PRECISION NOT NULL,
    min DOUBLE PRECISION NOT NULL,
    max DOUBLE PRECISION NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (series_id, resolution, bucket)
);

CREATE INDEX metric_rollups_resolution_bucket ON metric_rollups (resolution, bucket);

-- How far the rollup job has come: points received before `done_until`
-- (ms) are rolled up. One row, named 'rollup'.
CREATE TABLE metric_rollup_state (
    name TEXT PRIMARY KEY,
    done_until BIGINT NOT NULL
);
