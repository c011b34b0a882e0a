-- As fold_job_counts.sql, for the jobs in the broker.
WITH gone AS (DELETE FROM broker_counts RETURNING engine, n)
INSERT INTO broker_counts (engine, n)
SELECT engine, sum(n) FROM gone GROUP BY engine HAVING sum(n) <> 0
