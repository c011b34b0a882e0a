-- $1 tenant: its own quotas (NULL: the default).
SELECT max_active_jobs, submits_per_minute FROM tenants WHERE name = $1
