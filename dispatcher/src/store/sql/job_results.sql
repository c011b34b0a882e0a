SELECT job_id, rank, score, seed, width, height, key FROM results
WHERE job_id = ANY($1) ORDER BY job_id, rank
