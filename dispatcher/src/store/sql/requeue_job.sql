-- $1 id, $2 next attempt, $3 error (why the previous attempt ended).
UPDATE jobs SET state = 'queued', attempt = $2, error = $3, worker = NULL,
lease_expires_at = NULL, progress_step = NULL, progress_total = NULL,
republished = 0, reissued = 0, updated_at = now() WHERE id = $1
