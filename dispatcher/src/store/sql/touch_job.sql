-- $1 id, $2 attempt, $3 worker, $4 event time, $5 lease seconds,
-- $6 progress step (or NULL), $7 progress total (or NULL),
-- $8 true for `started`, which only a queued job accepts (a repeat is a duplicate).
UPDATE jobs
SET state = 'running',
    worker = $3,
    started_at = coalesce(started_at, $4),
    lease_expires_at = now() + make_interval(secs => $5),
    progress_step = coalesce($6, progress_step),
    progress_total = coalesce($7, progress_total),
    updated_at = now()
WHERE id = $1
  AND attempt = $2
  AND state IN ('queued', 'running')
  AND (NOT $8 OR state = 'queued')
  AND ($6::integer IS NULL OR progress_step IS NULL OR progress_step <= $6)
