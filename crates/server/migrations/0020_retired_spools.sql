-- Spools a cursor row stands for: 1, or for the row of spool id '' (no
-- batch can name it) the spools of the device's stream folded into it
-- when it had too many (ADR 0012).
ALTER TABLE telemetry_cursors ADD COLUMN spools BIGINT NOT NULL DEFAULT 1;
