-- Custom metrics are stored as series points only (ADR 0014): since 0016
-- every named value was written here and as a point of its series, and
-- nothing reads this table any more.
DROP TABLE custom_metrics;
