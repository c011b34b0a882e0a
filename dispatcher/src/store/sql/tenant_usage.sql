-- $1 tenant, $2 first batch id of the last minute (a UUIDv7 bound), $3 cap
-- on the active jobs counted: what the tenant uses of its quotas.
SELECT
  (SELECT count(*) FROM (SELECT 1 FROM jobs j
     WHERE j.tenant = $1 AND j.state IN ('queued', 'running') LIMIT $3) AS a) AS active,
  (SELECT count(*) FROM batches b WHERE b.tenant = $1 AND b.id >= $2) AS recent,
  (SELECT b.id FROM batches b WHERE b.tenant = $1 AND b.id >= $2
     ORDER BY b.id LIMIT 1) AS oldest_recent
