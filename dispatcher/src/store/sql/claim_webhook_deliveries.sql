-- Claims up to $1 due deliveries for $2 seconds, oldest due first, with
-- their batch's URL and secret.
WITH due AS (
    SELECT id FROM webhook_deliveries
    WHERE state = 'pending' AND next_at <= now()
      AND (claimed_until IS NULL OR claimed_until < now())
    ORDER BY next_at, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d
SET claimed_until = now() + make_interval(secs => $2)
FROM due, batches b
WHERE d.id = due.id AND b.id = d.batch_id
RETURNING d.id, d.event, d.body, d.attempts, d.created_at,
          b.webhook_url AS url, b.webhook_secret AS secret
