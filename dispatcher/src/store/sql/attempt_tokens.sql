-- $1 job ids, $2 attempts: the token hash of each of these attempts that
-- was published.
SELECT t.job_id, t.attempt, t.token_hash
FROM unnest($1::uuid[], $2::int[]) AS u (job_id, attempt)
JOIN attempt_tokens t ON t.job_id = u.job_id AND t.attempt = u.attempt
