-- One row per event, at most one per job: $1 ids, $2 attempts, $3 workers,
-- $4 event times, $5 progress steps (NULL but for progress), $6 progress
-- totals, $7 true for `started`, which only a queued job accepts (a repeat
-- is a duplicate); $8 lease seconds. `started`, `progress` and `heartbeat`
-- each move a queued job of that attempt to running and extend its lease;
-- progress never moves backwards. Answers the jobs it changed.
UPDATE jobs j
SET state = 'running',
    worker = u.worker,
    started_at = coalesce(j.started_at, u.at),
    lease_expires_at = now() + make_interval(secs => $8),
    progress_step = coalesce(u.step, j.progress_step),
    progress_total = coalesce(u.total, j.progress_total),
    updated_at = now()
FROM unnest($1::uuid[], $2::int[], $3::text[], $4::timestamptz[], $5::int[], $6::int[], $7::bool[])
    AS u (id, attempt, worker, at, step, total, started)
WHERE j.id = u.id
  AND j.attempt = u.attempt
  AND j.state IN ('queued', 'running')
  AND (NOT u.started OR j.state = 'queued')
  AND (u.step IS NULL OR j.progress_step IS NULL OR j.progress_step <= u.step)
RETURNING j.id, j.batch_id
