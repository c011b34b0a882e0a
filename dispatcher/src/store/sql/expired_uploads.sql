-- $1 default retention (seconds), $2 limit: deletes uploads unused for
-- longer than their tenant's retention that no job refers to (uploads a
-- submit in progress has locked are skipped), and queues their objects
-- for deletion; answers their tenants and keys.
WITH doomed AS (
    SELECT u.id
    FROM uploads u
    JOIN tenants t ON t.name = u.tenant
    WHERE coalesce(u.last_used_at, u.created_at)
          < now() - make_interval(secs => coalesce(t.retention_secs::float8, $1::float8))
      AND NOT EXISTS (
          SELECT 1 FROM jobs j
          WHERE j.params->>'init_image' = u.id AND j.tenant = u.tenant
      )
    ORDER BY u.created_at
    LIMIT $2
    FOR UPDATE OF u SKIP LOCKED
), gone AS (
    DELETE FROM uploads WHERE id IN (SELECT id FROM doomed) RETURNING tenant, key
), queued AS (
    INSERT INTO prune_objects (key, is_prefix)
    SELECT key, false FROM gone
    ON CONFLICT (key) DO NOTHING
)
SELECT tenant, key FROM gone
