-- What an audit record says beyond method, path and status, as JSON: a
-- tunnel's device, kind, target, start, end and bytes (ADR 0021).
ALTER TABLE audit ADD COLUMN detail TEXT;
