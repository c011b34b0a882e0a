SELECT id, event, job_id, state, attempts, last_status, last_error, created_at,
       last_attempt_at, next_at, delivered_at
FROM webhook_deliveries
WHERE batch_id = $1 AND id > $2
ORDER BY id
LIMIT $3
