-- A failed attempt at $1 (status $2, error $3): tried again $4 seconds
-- from now, or given up when that is past $5 seconds from its creation.
UPDATE webhook_deliveries
SET attempts = attempts + 1, last_status = $2, last_error = $3, last_attempt_at = now(),
    claimed_until = NULL,
    next_at = now() + make_interval(secs => $4),
    state = CASE WHEN now() + make_interval(secs => $4) > created_at + make_interval(secs => $5)
                 THEN 'failed' ELSE 'pending' END
WHERE id = $1 AND state = 'pending'
RETURNING state
