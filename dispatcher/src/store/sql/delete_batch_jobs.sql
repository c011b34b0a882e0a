-- $1 batch ids: deletes their jobs with their results, outbox rows and
-- attempt tokens; answers how many jobs went.
WITH tokens AS (
    DELETE FROM attempt_tokens WHERE job_id IN (SELECT id FROM jobs WHERE batch_id = ANY($1))
), results AS (
    DELETE FROM results WHERE job_id IN (SELECT id FROM jobs WHERE batch_id = ANY($1))
), outbox AS (
    DELETE FROM outbox WHERE job_id IN (SELECT id FROM jobs WHERE batch_id = ANY($1))
), gone AS (
    DELETE FROM jobs WHERE batch_id = ANY($1) RETURNING 1
)
SELECT count(*) FROM gone
