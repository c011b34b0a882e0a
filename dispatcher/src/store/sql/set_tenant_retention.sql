-- $1 tenant, $2 retention in seconds (NULL: the dispatcher's default).
UPDATE tenants SET retention_secs = $2 WHERE name = $1 RETURNING retention_secs
