SELECT id, attempt, worker FROM jobs
WHERE state = 'running' AND lease_expires_at < now()
ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
