-- $1 batch: one outbox row (attempt 1) per job, in batch order.
INSERT INTO outbox (job_id, attempt, engine, priority)
SELECT id, 1, engine, priority FROM jobs WHERE batch_id = $1 ORDER BY seq
