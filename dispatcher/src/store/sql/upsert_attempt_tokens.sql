-- $1 job ids, $2 attempts, $3 SHA-256 of each publish's token (a publish
-- of an attempt again adds one). In id order, as every writer of many
-- jobs' rows.
INSERT INTO attempt_tokens (job_id, attempt, token_hash)
SELECT * FROM unnest($1::uuid[], $2::int[], $3::bytea[]) AS u (job_id, attempt, token_hash)
ORDER BY job_id
ON CONFLICT DO NOTHING
