-- A device creates at most `ingest.max_series_per_device` metric series;
-- the new series it was refused, and their points, are counted here
-- (`GET /devices/{name}/usage`).
ALTER TABLE devices ADD COLUMN metric_series_refused BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN metric_points_refused BIGINT NOT NULL DEFAULT 0;

-- Raw points without a foreign key to their series (ADR 0018): on
-- PostgreSQL the key's check, a trigger per inserted point, was two fifths
-- of the database's time ingesting metrics. Every point is written with
-- its series' row in the same transaction; what the cascade did, deleting
-- a device's or a pruned series' points, the store does itself
-- (`Store::delete_device`, `Store::prune_metrics`). SQLite cannot drop a
-- constraint, so the table is rebuilt, alike on both.
CREATE TABLE metric_points_new (
    series_id BIGINT NOT NULL,
    at BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (series_id, at)
);
INSERT INTO metric_points_new (series_id, at, value, received_at)
    SELECT series_id, at, value, received_at FROM metric_points;
DROP TABLE metric_points;
ALTER TABLE metric_points_new RENAME TO metric_points;
CREATE INDEX metric_points_received_at ON metric_points (received_at);
