-- $1 job ids (locked): takes the `batch.finished` lock of each of their
-- batches that has a webhook told of it, in batch order (see the webhooks
-- migration), so that the set's statements, whose trigger takes these
-- locks again, never take them in another order than another set.
SELECT lock_batch_finished(b.id)
FROM (
    SELECT DISTINCT j.batch_id AS id
    FROM jobs j JOIN batches b ON b.id = j.batch_id
    WHERE j.id = ANY($1) AND 'batch.finished' = ANY (b.webhook_events)
    ORDER BY 1
) b
