-- $1 engine, $2 limit. No row locks: the caller holds the engine's advisory
-- lock, and a cancel deleting these rows must not wait for the broker.
SELECT o.id, o.job_id, o.attempt, j.batch_id, j.tenant, j.prompt, j.params,
       j.state, j.attempt AS job_attempt
FROM outbox o
JOIN jobs j ON j.id = o.job_id
WHERE o.engine = $1 AND o.not_before <= now()
ORDER BY o.priority DESC, o.id
LIMIT $2
