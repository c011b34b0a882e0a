-- $1 default retention (seconds), $2 most batches, $3 most jobs (a batch
-- larger than that comes alone): the oldest expired batches, locked
-- (batches another pruner holds are skipped).
WITH due AS (
    SELECT b.id, b.total, b.created_at
    FROM batches b
    WHERE b.id IN (SELECT id FROM expired_batches($1::float8) LIMIT $2)
    ORDER BY b.created_at, b.id
    FOR UPDATE OF b SKIP LOCKED
)
SELECT id FROM (
    SELECT id, created_at, sum(total) OVER (ORDER BY created_at, id) - total AS before
    FROM due
) d
WHERE before < $3
ORDER BY created_at, id
