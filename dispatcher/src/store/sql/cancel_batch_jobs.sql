UPDATE jobs
SET state = 'cancelled', finished_at = now(), updated_at = now(),
    lease_expires_at = NULL, error = 'cancelled by request'
WHERE batch_id = $1 AND state IN ('queued', 'running')
RETURNING id
