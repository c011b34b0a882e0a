-- $1 batch ids whose jobs are gone: deletes them, their counts (the
-- deltas the jobs' deletion appended too) and their feed rows, and queues the objects under
-- each batch's prefix for deletion in the same transaction.
WITH counts AS (
    DELETE FROM batch_counts WHERE batch_id = ANY($1)
), deltas AS (
    DELETE FROM batch_count_deltas WHERE batch_id = ANY($1)
), feed AS (
    DELETE FROM job_feed WHERE batch_id = ANY($1)
), gone AS (
    DELETE FROM batches WHERE id = ANY($1) RETURNING id, tenant
)
INSERT INTO prune_objects (key, is_prefix)
SELECT tenant || '/' || id || '/', true FROM gone
ON CONFLICT (key) DO NOTHING
