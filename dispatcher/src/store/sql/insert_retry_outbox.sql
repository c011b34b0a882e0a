-- $1 job, $2 backoff in seconds: an outbox row for the job's current attempt.
INSERT INTO outbox (job_id, attempt, engine, priority, not_before)
SELECT id, attempt, engine, priority, now() + make_interval(secs => $2)
FROM jobs WHERE id = $1
