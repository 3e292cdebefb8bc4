-- A device's spec (desired configuration, JSON, versioned) and the status
-- its agent last reported (JSON) with the spec version it applied. One row
-- per device, written on the first spec update or the first report; a
-- device without a row has the empty spec, version 0, and no status.
-- A table beside `devices` so reading and listing devices, which does not
-- need these documents, stays as cheap as it was.
CREATE TABLE device_specs (
    device TEXT PRIMARY KEY REFERENCES devices (name) ON DELETE CASCADE,
    spec TEXT NOT NULL,
    spec_version BIGINT NOT NULL,
    spec_updated_at BIGINT,
    status TEXT,
    status_spec_version BIGINT,
    status_reported_at BIGINT
);
