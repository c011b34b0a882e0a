-- $1 tenant: its own retention in seconds (NULL: the default).
SELECT retention_secs FROM tenants WHERE name = $1
