-- $1 claimed deliveries not tried because their receiver just failed:
-- due again in $2 seconds, unclaimed, their attempts unchanged.
UPDATE webhook_deliveries
SET next_at = now() + make_interval(secs => $2), claimed_until = NULL
WHERE id = ANY($1) AND state = 'pending'
