-- Folds the deltas this snapshot sees into one row per key; deltas of
-- transactions still open stay for the next fold.
WITH gone AS (DELETE FROM job_counts RETURNING engine, state, n)
INSERT INTO job_counts (engine, state, n)
SELECT engine, state, sum(n) FROM gone GROUP BY engine, state HAVING sum(n) <> 0
