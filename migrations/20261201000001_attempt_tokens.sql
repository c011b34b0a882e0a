-- Each publish of a job attempt carries a random token that its worker's
-- events must present; only its SHA-256 is kept. Written by the relay just
-- before it publishes (a publish of the same attempt again, when the broker
-- lost the message, adds a token: a copy of the first may still be out).
-- An attempt published before this table existed has no token: events
-- without one are accepted for it (see crate::events).
CREATE TABLE attempt_tokens (
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    token_hash  bytea NOT NULL,
    PRIMARY KEY (job_id, attempt, token_hash)
);
