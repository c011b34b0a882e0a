-- $1 job ids, $2 the attempt the broker now holds for each.
UPDATE jobs SET published_attempt = u.attempt, published_at = clock_timestamp()
FROM UNNEST($1::uuid[], $2::int[]) AS u (id, attempt)
WHERE jobs.id = u.id AND jobs.attempt = u.attempt
