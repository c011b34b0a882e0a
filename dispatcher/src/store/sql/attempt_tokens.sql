-- $1 job ids, $2 attempts: for each of these attempts of a job that
-- exists, the hashes of the tokens issued with its publishes, and whether
-- the broker holds (or held) it: the job's published attempt.
SELECT u.job_id, u.attempt,
       coalesce(array_agg(t.token_hash) FILTER (WHERE t.token_hash IS NOT NULL), '{}') AS hashes,
       bool_and(j.published_attempt IS NOT DISTINCT FROM u.attempt) AS published
FROM unnest($1::uuid[], $2::int[]) AS u (job_id, attempt)
JOIN jobs j ON j.id = u.job_id
LEFT JOIN attempt_tokens t ON t.job_id = u.job_id AND t.attempt = u.attempt
GROUP BY u.job_id, u.attempt
