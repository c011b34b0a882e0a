-- One `succeeded` per job: $1 ids, $2 attempts, $3 workers; and the results
-- of all of them, one array per column: $4 job ids, $5 ranks, $6 scores,
-- $7 seeds, $8 widths, $9 heights, $10 keys.
--
-- The first `succeeded` of the current attempt wins and its results are
-- kept. A worker may only name objects under the job's own prefix
-- ({tenant}/{batch}/{job}/, no `..`): a job whose results name any other
-- key fails instead, with a reason that names the key. Answers the jobs it
-- changed, with that reason for the failed ones.
WITH u AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[]) AS u (id, attempt, worker)
), r AS (
    SELECT * FROM unnest($4::uuid[], $5::int[], $6::real[], $7::bigint[], $8::int[],
                         $9::int[], $10::text[])
        AS r (job_id, rank, score, seed, width, height, key)
), due AS (
    SELECT j.id, u.attempt, u.worker,
           (SELECT r.key FROM r
            WHERE r.job_id = j.id
              AND (NOT starts_with(r.key, j.tenant || '/' || j.batch_id || '/' || j.id || '/')
                   OR strpos(r.key, '..') > 0)
            ORDER BY r.rank LIMIT 1) AS bad_key
    FROM jobs j JOIN u ON u.id = j.id
    WHERE j.attempt = u.attempt AND j.state IN ('queued', 'running')
), won AS (
    UPDATE jobs j
    SET state = 'succeeded', worker = d.worker, finished_at = now(), updated_at = now(),
        started_at = coalesce(j.started_at, now()), lease_expires_at = NULL, error = NULL,
        progress_step = coalesce(j.progress_total, j.progress_step)
    FROM due d
    WHERE j.id = d.id AND d.bad_key IS NULL
      AND j.attempt = d.attempt AND j.state IN ('queued', 'running')
    RETURNING j.id, j.batch_id
), refused AS (
    UPDATE jobs j
    SET state = 'failed', finished_at = now(), updated_at = now(), lease_expires_at = NULL,
        error = 'worker ' || d.worker || ' reported a result outside the job''s prefix: '
                || d.bad_key
    FROM due d
    WHERE j.id = d.id AND d.bad_key IS NOT NULL
      AND j.attempt = d.attempt AND j.state IN ('queued', 'running')
    RETURNING j.id, j.batch_id, j.error
), kept AS (
    INSERT INTO results (job_id, rank, score, seed, width, height, key)
    SELECT r.job_id, r.rank, r.score, r.seed, r.width, r.height, r.key
    FROM r JOIN won ON won.id = r.job_id
    ON CONFLICT (job_id, rank) DO UPDATE SET score = EXCLUDED.score, seed = EXCLUDED.seed,
        width = EXCLUDED.width, height = EXCLUDED.height, key = EXCLUDED.key
)
SELECT id, batch_id, NULL::text AS error FROM won
UNION ALL
SELECT id, batch_id, error FROM refused
