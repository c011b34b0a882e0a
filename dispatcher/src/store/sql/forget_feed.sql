-- $1 age in seconds, $2 limit: deletes feed rows older than the age.
DELETE FROM job_feed
WHERE id IN (
    SELECT id FROM job_feed
    WHERE at < now() - make_interval(secs => $1)
    ORDER BY at
    LIMIT $2
)
