-- $1 engine, $2 seconds, $3 limit: jobs the broker confirmed more than $2 s
-- ago that no worker has started, oldest first.
SELECT id, attempt, republished FROM jobs
WHERE engine = $1 AND state = 'queued' AND published_attempt = attempt
  AND published_at < now() - make_interval(secs => $2)
ORDER BY published_at
LIMIT $3
FOR UPDATE SKIP LOCKED
