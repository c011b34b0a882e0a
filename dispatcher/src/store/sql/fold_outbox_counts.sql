-- As fold_job_counts.sql, for the outbox.
WITH gone AS (DELETE FROM outbox_counts RETURNING engine, n)
INSERT INTO outbox_counts (engine, n)
SELECT engine, sum(n) FROM gone GROUP BY engine HAVING sum(n) <> 0
