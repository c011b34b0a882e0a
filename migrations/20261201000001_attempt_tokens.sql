-- Each published attempt carries a random token that its worker's events
-- must present; only its SHA-256 is kept. Written by the relay just before
-- it publishes the attempt (a republish of the same attempt replaces it).
CREATE TABLE attempt_tokens (
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    token_hash  bytea NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
