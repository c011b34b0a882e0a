-- Times the current attempt was published again because the bucket
-- refused its presigned URLs (kept apart from `republished`, the
-- rescuer's count of lost messages, so that neither spends the other's
-- allowance). A constant default: no table rewrite.
ALTER TABLE jobs ADD COLUMN reissued integer NOT NULL DEFAULT 0;
