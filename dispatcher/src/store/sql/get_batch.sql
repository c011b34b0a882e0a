SELECT b.id, b.name, b.engine, b.priority, b.metadata, b.retry_of, b.total,
       b.cancelled_at, b.created_at, greatest(b.updated_at, c.last_update) AS updated_at,
       c.queued, c.running, c.succeeded, c.failed, c.cancelled, c.last_finished
FROM batches b
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE state = 'queued') AS queued,
           count(*) FILTER (WHERE state = 'running') AS running,
           count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE state = 'failed') AS failed,
           count(*) FILTER (WHERE state = 'cancelled') AS cancelled,
           max(finished_at) AS last_finished,
           max(updated_at) AS last_update
    FROM jobs WHERE batch_id = b.id
) c
WHERE b.id = $1 AND b.tenant = $2
