-- A device creates at most `ingest.max_series_per_device` metric series;
-- the new series it was refused, and their points, are counted here
-- (`GET /devices/{name}/usage`).
ALTER TABLE devices ADD COLUMN metric_series_refused BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN metric_points_refused BIGINT NOT NULL DEFAULT 0;
