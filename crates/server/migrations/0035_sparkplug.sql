-- The Sparkplug B northbound (issue 18): the bdSeq each edge node's latest
-- MQTT session took, so a restarted tetherd or a new leader starts the
-- next session after it instead of repeating a number a stale will carries.
CREATE TABLE sparkplug_nodes (
    group_id TEXT NOT NULL,
    edge_node_id TEXT NOT NULL,
    -- 0 to 255.
    bd_seq BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (group_id, edge_node_id)
);
