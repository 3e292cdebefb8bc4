-- Each device's log lines numbered in the order tetherd stored them
-- (`pos`, from 1): a live follower reads the lines after the last it sent,
-- whatever time the device gave them (a spool replayed after an outage
-- brings old times late). Lines stored before this migration are numbered
-- in time order.
ALTER TABLE logs ADD COLUMN pos BIGINT NOT NULL DEFAULT 0;

UPDATE logs SET pos = (
    SELECT COUNT(*) FROM logs AS earlier
    WHERE earlier.device = logs.device
      AND (earlier.at < logs.at OR (earlier.at = logs.at AND earlier.seq <= logs.seq))
);

CREATE UNIQUE INDEX logs_device_pos ON logs (device, pos);
