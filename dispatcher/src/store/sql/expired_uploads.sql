-- $1 default retention (seconds), $2 limit: deletes expired uploads and
-- queues their objects for deletion; answers their tenants and keys. An
-- upload a submit in progress has locked is skipped, and one a submit used
-- since this statement's snapshot fails the check of its last use.
WITH doomed AS (
    SELECT u.id
    FROM uploads u
    JOIN (SELECT * FROM expired_uploads($1::float8) LIMIT $2) e ON e.id = u.id
    WHERE coalesce(u.last_used_at, u.created_at) = e.last_use
    FOR UPDATE OF u SKIP LOCKED
), gone AS (
    DELETE FROM uploads WHERE id IN (SELECT id FROM doomed) RETURNING tenant, key
), queued AS (
    INSERT INTO prune_objects (key, is_prefix)
    SELECT key, false FROM gone
    ON CONFLICT (key) DO NOTHING
)
SELECT tenant, key FROM gone
