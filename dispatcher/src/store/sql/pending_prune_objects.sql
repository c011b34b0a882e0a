-- $1 limit: objects queued for deletion, oldest first.
SELECT key, is_prefix FROM prune_objects ORDER BY created_at, key LIMIT $1
