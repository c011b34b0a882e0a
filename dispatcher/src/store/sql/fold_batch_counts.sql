-- Folds the batch deltas this snapshot sees into one row per batch that
-- moved (deltas of transactions still open stay for the next fold).
WITH gone AS (DELETE FROM batch_count_deltas RETURNING *)
INSERT INTO batch_counts AS c
    (batch_id, queued, running, succeeded, failed, cancelled, last_change, last_finished)
SELECT batch_id, sum(queued), sum(running), sum(succeeded), sum(failed), sum(cancelled),
       max(last_change), max(last_finished)
FROM gone GROUP BY batch_id
ON CONFLICT (batch_id) DO UPDATE SET
    queued = c.queued + excluded.queued,
    running = c.running + excluded.running,
    succeeded = c.succeeded + excluded.succeeded,
    failed = c.failed + excluded.failed,
    cancelled = c.cancelled + excluded.cancelled,
    last_change = greatest(c.last_change, excluded.last_change),
    last_finished = greatest(c.last_finished, excluded.last_finished)
