-- $1 tenant, $2 upload ids: those that exist, marked used now (under a row
-- lock until the submit commits), so that the pruner leaves them.
UPDATE uploads SET last_used_at = now()
WHERE tenant = $1 AND id = ANY($2)
RETURNING id
