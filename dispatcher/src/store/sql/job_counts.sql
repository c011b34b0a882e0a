-- The deltas the jobs table's triggers append (migration 20261130000003),
-- folded every few seconds: a few rows, whatever the history.
SELECT engine, state, sum(n)::bigint FROM job_counts
GROUP BY engine, state HAVING sum(n) <> 0 ORDER BY 1, 2
