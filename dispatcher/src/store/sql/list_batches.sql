SELECT b.id, b.name, b.engine, b.priority, b.metadata, b.retry_of, b.total,
       b.cancelled_at, b.created_at, greatest(b.updated_at, c.last_change) AS updated_at,
       c.queued, c.running, c.succeeded, c.failed, c.cancelled, c.last_finished,
       b.webhook_url, b.webhook_events
FROM (
    SELECT * FROM batches
    WHERE tenant = $1 AND ($2::uuid IS NULL OR id < $2)
    ORDER BY id DESC
    LIMIT $3
) b
CROSS JOIN LATERAL batch_job_counts(b.id) c
ORDER BY b.id DESC
