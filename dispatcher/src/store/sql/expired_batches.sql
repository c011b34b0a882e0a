-- $1 default retention (seconds), $2 most batches, $3 most jobs (a batch
-- larger than that comes alone): finished batches whose last job finished
-- longer ago than their tenant's retention, oldest first, locked (batches
-- another pruner holds are skipped).
WITH bound AS (
    -- No batch younger than the shortest retention can be due: the range
    -- on batches_created.
    SELECT now() - make_interval(secs => least($1::float8, min(retention_secs)::float8)) AS t
    FROM tenants
), due AS (
    SELECT b.id, b.tenant, b.total, b.created_at
    FROM batches b
    CROSS JOIN bound
    JOIN tenants t ON t.name = b.tenant
    CROSS JOIN LATERAL batch_job_counts(b.id) c
    WHERE b.created_at < bound.t
      AND c.queued = 0 AND c.running = 0
      AND coalesce(c.last_finished, b.updated_at)
          < now() - make_interval(secs => coalesce(t.retention_secs::float8, $1::float8))
    ORDER BY b.created_at
    LIMIT $2
    FOR UPDATE OF b SKIP LOCKED
)
SELECT id FROM (
    SELECT id, tenant, total, created_at,
           sum(total) OVER (ORDER BY created_at, id) - total AS before
    FROM due
) d
WHERE before < $3
ORDER BY created_at, id
