-- Desired state (issue 17, ADR 0029): chart templates, deployments with
-- every revision they had, and each targeted device's place in the
-- rollout.

CREATE TABLE chart_templates (
    name TEXT PRIMARY KEY,
    -- JSON: chart, source, version, namespace, values.
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE deployments (
    name TEXT PRIMARY KEY,
    -- JSON: target, hostname, charts, values, processes, configFiles, rollout.
    spec TEXT NOT NULL,
    revision BIGINT NOT NULL,
    -- progressing, complete, paused, deleting.
    phase TEXT NOT NULL,
    -- Why it paused.
    reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- What each revision was, templates resolved: a rollback sends it again.
CREATE TABLE deployment_revisions (
    deployment TEXT NOT NULL REFERENCES deployments (name) ON DELETE CASCADE,
    revision BIGINT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (deployment, revision)
);

-- Which templates a deployment uses: a used template cannot be deleted,
-- and a changed one makes a new revision of each user.
CREATE TABLE deployment_templates (
    deployment TEXT NOT NULL REFERENCES deployments (name) ON DELETE CASCADE,
    template TEXT NOT NULL REFERENCES chart_templates (name),
    PRIMARY KEY (deployment, template)
);

CREATE INDEX deployment_templates_template ON deployment_templates (template);

-- Each device a deployment reached: the revision in its spec, the one
-- before, the batch, and what the device last reported.
CREATE TABLE deployment_devices (
    deployment TEXT NOT NULL REFERENCES deployments (name) ON DELETE CASCADE,
    device TEXT NOT NULL REFERENCES devices (name) ON DELETE CASCADE,
    revision BIGINT,
    previous_revision BIGINT,
    version TEXT,
    batch BIGINT,
    rolled_back_from BIGINT,
    assigned_at BIGINT NOT NULL,
    reported_version TEXT,
    -- ready, progressing, failed: as reported for reported_version.
    state TEXT,
    reason TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (deployment, device)
);

CREATE INDEX deployment_devices_device ON deployment_devices (device);
