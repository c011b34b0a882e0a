-- $1 batch, $2 tenant, $3 engine, $4 priority, $5 max_attempts,
-- $6 seq offset of this chunk, $7 ids, $8 prompts, $9 params (JSON text).
INSERT INTO jobs (id, batch_id, tenant, seq, engine, priority, prompt, params, max_attempts)
SELECT u.id, $1, $2, $6 + (u.ord - 1)::integer, $3, $4, u.prompt, u.params::jsonb, $5
FROM UNNEST($7::uuid[], $8::text[], $9::text[]) WITH ORDINALITY AS u (id, prompt, params, ord)
