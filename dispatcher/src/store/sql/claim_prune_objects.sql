-- $1 limit, $2 lease in seconds: claims the objects queued for deletion
-- that no pruner holds, oldest first, for the lease. The claim commits at
-- once: the bucket is cleaned outside any transaction, so no transaction
-- stays open while it is (the job feed's readers wait on the oldest one).
UPDATE prune_objects SET claimed_until = now() + make_interval(secs => $2)
WHERE key IN (
    SELECT key FROM prune_objects
    WHERE claimed_until IS NULL OR claimed_until < now()
    ORDER BY created_at, key
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
RETURNING key, is_prefix
