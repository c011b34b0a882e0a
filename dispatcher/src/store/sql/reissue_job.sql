-- $1 id, $2 attempt, $3 error, $4 limit: the bucket refused the attempt's
-- URLs; back to queued, to be published again (same attempt, fresh URLs),
-- unless this attempt was published again for that $4 times already.
UPDATE jobs SET state = 'queued', published_attempt = NULL, published_at = NULL,
reissued = reissued + 1, worker = NULL, lease_expires_at = NULL,
progress_step = NULL, progress_total = NULL, error = $3, updated_at = now()
WHERE id = $1 AND attempt = $2 AND state IN ('queued', 'running') AND reissued < $4
