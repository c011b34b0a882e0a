-- $1 tenant, $2 max active jobs, $3 submits per minute (NULL: the default).
UPDATE tenants SET max_active_jobs = $2, submits_per_minute = $3 WHERE name = $1
RETURNING max_active_jobs, submits_per_minute
