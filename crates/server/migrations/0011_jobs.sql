-- Fleet-wide jobs: one action for every device a label selector matched at
-- creation. Each device's action is a normal row of `actions` with the
-- job's id, so every action API works on it.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    label_selector TEXT NOT NULL,
    action TEXT NOT NULL,
    -- JSON, redacted.
    input TEXT NOT NULL,
    -- running, completed or cancelled.
    state TEXT NOT NULL,
    -- How many actions were created (devices matched).
    devices BIGINT NOT NULL,
    -- NULL: unlimited.
    concurrency BIGINT,
    rate_per_second BIGINT,
    ttl_seconds BIGINT NOT NULL,
    timeout_seconds BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    cancelled_at BIGINT,
    -- When the last action ended; then `counts` holds the final counts by
    -- state (JSON), which outlive the actions' own retention.
    finished_at BIGINT,
    counts TEXT
);
-- The dispatcher reads unfinished jobs; retention deletes finished ones by time.
CREATE INDEX jobs_finished_at ON jobs (finished_at);
CREATE INDEX jobs_created_at ON jobs (created_at);

-- No foreign key: retention prunes actions and jobs separately, and a
-- job's counts are kept after its actions are gone.
ALTER TABLE actions ADD COLUMN job_id TEXT;
-- Counts by state and the dispatcher's release of queued actions.
CREATE INDEX actions_job_id_state ON actions (job_id, state);
