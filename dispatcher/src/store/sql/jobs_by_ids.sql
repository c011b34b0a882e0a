-- $1 job ids, $2 tenant.
SELECT id, batch_id, seq, engine, prompt, params, state, attempt, max_attempts,
       progress_step, progress_total, error, worker, created_at, started_at, finished_at
FROM jobs
WHERE id = ANY($1) AND tenant = $2
