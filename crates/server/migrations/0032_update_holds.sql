-- Why each device takes no new revision of its deployments now, as its
-- agent last reported (JSON array of holds; NULL: none). Kept beside the
-- report so that a rollout reads the few held devices without parsing
-- every device's status (ADR 0029).
ALTER TABLE device_specs ADD COLUMN update_holds TEXT;
