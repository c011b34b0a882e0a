UPDATE webhook_deliveries
SET state = 'delivered', attempts = attempts + 1, last_status = $2, last_error = NULL,
    last_attempt_at = now(), delivered_at = now(), claimed_until = NULL
WHERE id = $1 AND state = 'pending'
