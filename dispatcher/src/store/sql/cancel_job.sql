UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now(),
lease_expires_at = NULL, error = 'cancelled by request'
WHERE id = $1 AND tenant = $2 AND state IN ('queued', 'running')
