-- When the broker confirmed the published attempt, and how many times that
-- attempt was published again because no worker started it (the rescuer).
ALTER TABLE jobs
    ADD COLUMN published_at timestamptz,
    ADD COLUMN republished integer NOT NULL DEFAULT 0;
