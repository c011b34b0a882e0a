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
