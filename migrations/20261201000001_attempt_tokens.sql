-- Each publish of a job attempt carries a random token that its worker's
-- events must present; only its SHA-256 is kept. Written by the relay just
-- before it publishes (a publish of the same attempt again, when the broker
-- lost the message, adds a token: a copy of the first may still be out).
-- An attempt published before this table existed has no token: events
-- without one are accepted for it (see crate::events).
--
-- No foreign key to jobs: its check would lock (and so write to) every
-- job row the relay publishes, on the relay's path (24 ms instead of 14 ms
-- for a page of 1000 on the development machine). The pruner deletes a
-- job's tokens with the job.
CREATE TABLE attempt_tokens (
    job_id      uuid NOT NULL,
    attempt     integer NOT NULL,
    token_hash  bytea NOT NULL,
    PRIMARY KEY (job_id, attempt, token_hash)
);
