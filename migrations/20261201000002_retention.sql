-- Retention: finished batches past their tenant's retention are deleted
-- with their jobs, results and objects, and so are uploads no job refers
-- to once they have not been used for as long.
--
-- tenants.retention_secs: the tenant's own retention (NULL takes the
-- dispatcher's KILN_RETENTION).
ALTER TABLE tenants ADD COLUMN retention_secs bigint CHECK (retention_secs > 0);

-- When a submit last named the upload as an init image: an upload in use
-- is not pruned, however old.
ALTER TABLE uploads ADD COLUMN last_used_at timestamptz;

-- Objects to delete from the bucket: a batch's prefix or an upload's key,
-- written in the same transaction as the rows that referred to them are
-- deleted, and removed once the objects are gone. A crash in between
-- leaves the row, and the next pass deletes the objects.
CREATE TABLE prune_objects (
    key         text PRIMARY KEY,
    -- Every object whose key starts with `key`, or only the object `key`.
    is_prefix   boolean NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The pruner's scans: batches oldest first, and jobs by init image.
CREATE INDEX batches_created ON batches (created_at);
CREATE INDEX jobs_init_image ON jobs ((params->>'init_image'))
    WHERE params->>'init_image' IS NOT NULL;

-- Finished batches whose last job finished longer ago than their tenant's
-- retention (default_secs when the tenant has none of its own), oldest
-- first: what the pruner deletes, and what `prune --dry-run` shows.
CREATE FUNCTION expired_batches(default_secs float8)
RETURNS TABLE (id uuid, total integer, created_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT b.id, b.total, b.created_at
    FROM batches b
    JOIN tenants t ON t.name = b.tenant
    CROSS JOIN LATERAL batch_job_counts(b.id) c
    -- No batch younger than the shortest retention can be due: a range on
    -- batches_created.
    WHERE b.created_at < now() - make_interval(secs => (
              SELECT least(default_secs, min(retention_secs)::float8) FROM tenants))
      AND c.queued = 0 AND c.running = 0
      AND coalesce(c.last_finished, b.updated_at)
          < now() - make_interval(secs => coalesce(t.retention_secs::float8, default_secs))
    ORDER BY b.created_at, b.id
$$;

-- Uploads that no job refers to and that no submit used for longer than
-- their tenant's retention, oldest first, with the time of their last use.
CREATE FUNCTION expired_uploads(default_secs float8)
RETURNS TABLE (id text, last_use timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT u.id, coalesce(u.last_used_at, u.created_at)
    FROM uploads u
    JOIN tenants t ON t.name = u.tenant
    WHERE coalesce(u.last_used_at, u.created_at)
          < now() - make_interval(secs => coalesce(t.retention_secs::float8, default_secs))
      AND NOT EXISTS (
          SELECT 1 FROM jobs j
          WHERE j.params->>'init_image' = u.id AND j.tenant = u.tenant
      )
    ORDER BY u.created_at
$$;
