-- $1 id, $2 attempt, $3 worker: the first `succeeded` of the current attempt wins.
UPDATE jobs SET state = 'succeeded', worker = $3, finished_at = now(), updated_at = now(),
started_at = coalesce(started_at, now()), lease_expires_at = NULL, error = NULL,
progress_step = coalesce(progress_total, progress_step)
WHERE id = $1 AND attempt = $2 AND state IN ('queued', 'running')
