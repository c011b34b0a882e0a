-- $1 job, $2 attempt, $3 token hash: the publish that token came with is
-- spent (its URLs were refused); copies of its message speak no more.
DELETE FROM attempt_tokens WHERE job_id = $1 AND attempt = $2 AND token_hash = $3
