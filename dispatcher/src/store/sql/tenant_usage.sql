-- $1 tenant, $2 first batch id of the last minute (a UUIDv7 bound): what
-- the tenant uses of its quotas. Active jobs come from the counts the
-- triggers keep (migration 20261130000004), not from counting its jobs.
SELECT
  (coalesce((SELECT n FROM tenant_active WHERE tenant = $1), 0)
   + coalesce((SELECT sum(n) FROM tenant_active_deltas WHERE tenant = $1), 0))::bigint AS active,
  (SELECT count(*) FROM batches b WHERE b.tenant = $1 AND b.id >= $2) AS recent,
  (SELECT b.id FROM batches b WHERE b.tenant = $1 AND b.id >= $2
     ORDER BY b.id LIMIT 1) AS oldest_recent
