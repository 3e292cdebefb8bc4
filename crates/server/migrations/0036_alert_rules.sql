-- Operator-defined alert rules (issue 18, ADR 0032). The spec is the
-- API's JSON, checked before it is written.
CREATE TABLE alert_rules (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- A rule's condition holding on a device: since when (the rule's `for`
-- counts from it), and whether its alert was raised. A row exists only
-- while the condition holds, so the evaluator reads few; it survives a
-- change of leader.
CREATE TABLE alert_rule_states (
    rule TEXT NOT NULL REFERENCES alert_rules (name) ON DELETE CASCADE,
    device TEXT NOT NULL REFERENCES devices (name) ON DELETE CASCADE,
    pending_since BIGINT NOT NULL,
    -- 1 once the alert was raised.
    firing BIGINT NOT NULL,
    PRIMARY KEY (rule, device)
);

CREATE INDEX alert_rule_states_device ON alert_rule_states (device);
