-- The workers heard from within $2 seconds, all ($1 NULL) or the one with
-- id $1; `silent` when one has not been heard for three of its report
-- intervals.
SELECT id, host, version, engines, devices, slots, capacity, jobs_in_hand, phase,
       started_at, last_seen,
       last_seen < now() - 3 * interval_ms * interval '1 millisecond' AS silent
FROM workers
WHERE last_seen >= now() - make_interval(secs => $2)
  AND ($1::text IS NULL OR id = $1)
ORDER BY id
