-- $1 engine, $2 cap: jobs published but not started, counted up to the cap.
SELECT count(*) FROM (SELECT 1 FROM jobs WHERE engine = $1 AND state = 'queued'
AND published_attempt = attempt LIMIT $2) AS w
