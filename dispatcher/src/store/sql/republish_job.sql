-- $1 id, $2 attempt: the broker lost that attempt's message; publish it again.
UPDATE jobs SET published_attempt = NULL, published_at = NULL,
republished = republished + 1, updated_at = now()
WHERE id = $1 AND attempt = $2 AND state = 'queued'
