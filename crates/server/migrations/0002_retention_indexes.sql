-- Retention deletes old events and metrics of every device by time.
CREATE INDEX events_received_at ON events (received_at);
CREATE INDEX metrics_sampled_at ON metrics (sampled_at);
