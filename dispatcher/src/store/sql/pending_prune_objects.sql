-- $1 limit: objects queued for deletion, oldest first, claimed until the
-- transaction ends (keys another pruner has claimed are skipped).
SELECT key, is_prefix FROM prune_objects
ORDER BY created_at, key
LIMIT $1
FOR UPDATE SKIP LOCKED
