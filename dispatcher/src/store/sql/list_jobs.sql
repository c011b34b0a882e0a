-- $1 batch, $2 state (or NULL for every state), $3 seq to start after, $4 limit.
SELECT id, batch_id, seq, engine, prompt, params, state, attempt, max_attempts,
       progress_step, progress_total, error, worker, created_at, started_at, finished_at
FROM jobs
WHERE batch_id = $1 AND ($2::text IS NULL OR state = $2) AND seq > $3 ORDER BY seq LIMIT $4
