-- When the broker confirmed the published attempt, and how many times that
-- attempt was published again because no worker started it (the rescuer).
ALTER TABLE jobs
    ADD COLUMN published_at timestamptz,
    ADD COLUMN republished integer NOT NULL DEFAULT 0;
-- Jobs in the broker before this column existed: published by their last
-- change at the latest.
UPDATE jobs SET published_at = updated_at
WHERE state = 'queued' AND published_attempt = attempt;
