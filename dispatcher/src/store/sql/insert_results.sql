-- $1 job, then one array per column: $2 rank, $3 score, $4 seed, $5 width,
-- $6 height, $7 key.
INSERT INTO results (job_id, rank, score, seed, width, height, key)
SELECT $1, u.* FROM UNNEST($2::int[], $3::real[], $4::bigint[], $5::int[], $6::int[], $7::text[])
    AS u (rank, score, seed, width, height, key)
ON CONFLICT (job_id, rank) DO UPDATE SET score = EXCLUDED.score, seed = EXCLUDED.seed,
    width = EXCLUDED.width, height = EXCLUDED.height, key = EXCLUDED.key
