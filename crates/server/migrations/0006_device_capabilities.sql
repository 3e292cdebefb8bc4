-- A birth names the actions the agent implements (JSON array of strings).
ALTER TABLE devices ADD COLUMN capabilities TEXT NOT NULL DEFAULT '[]';
