-- Alert delivery (issue 18, ADR 0032): an outbox. Every change of an alert
-- queues one row per receiver in the same transaction as the change, and
-- one replica at a time sends them, so a replica dying mid-delivery loses
-- nothing.

-- The receivers named in `[alerts]`, as the last tetherd started read
-- them: a change is queued for the receivers named here when it happens,
-- so a receiver added later gets only later changes.
CREATE TABLE alert_receivers (
    name TEXT PRIMARY KEY,
    added_at BIGINT NOT NULL
);

CREATE TABLE alert_deliveries (
    -- A UUID (v7), also sent to the receiver to recognise a repeat.
    id TEXT PRIMARY KEY,
    receiver TEXT NOT NULL,
    alert_id BIGINT NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    -- The state the alert entered: firing, acknowledged or resolved.
    event TEXT NOT NULL,
    -- The event's place in an alert's life (0 firing, 1 acknowledged,
    -- 2 resolved): a receiver gets an alert's events in this order.
    step BIGINT NOT NULL,
    -- The alert as the change left it, JSON: what a webhook is sent.
    alert TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    -- pending, delivered or dead.
    state TEXT NOT NULL,
    last_error TEXT,
    delivered_at BIGINT
);

-- An alert enters each state once: queuing a change twice is a no-op.
CREATE UNIQUE INDEX alert_deliveries_change ON alert_deliveries (alert_id, receiver, step);
CREATE INDEX alert_deliveries_due ON alert_deliveries (receiver, state, next_attempt_at);
CREATE INDEX alert_deliveries_listing ON alert_deliveries (state, created_at, id);
