-- $1 id, $2 attempt, $3 terminal state, $4 reason.
UPDATE jobs SET state = $3, error = $4, finished_at = now(), updated_at = now(),
lease_expires_at = NULL
WHERE id = $1 AND attempt = $2 AND state IN ('queued', 'running')
