-- $1 job ids, $2 attempts, $3 SHA-256 of each attempt's token (a republish
-- of an attempt replaces its token). In id order, as every writer of many
-- jobs' rows.
INSERT INTO attempt_tokens (job_id, attempt, token_hash)
SELECT * FROM unnest($1::uuid[], $2::int[], $3::bytea[]) AS u (job_id, attempt, token_hash)
ORDER BY job_id
ON CONFLICT (job_id, attempt) DO UPDATE SET token_hash = excluded.token_hash
