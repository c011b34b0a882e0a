-- $1 batch: where each of its running jobs is.
SELECT id, progress_step, progress_total
FROM jobs
WHERE batch_id = $1 AND state = 'running'
  AND progress_step IS NOT NULL AND progress_total IS NOT NULL
