-- One terminal event per job: $1 ids, $2 attempts, $3 terminal states,
-- $4 reasons. As finish_job.sql, per row; answers the jobs it changed.
UPDATE jobs j
SET state = u.state, error = u.reason, finished_at = now(), updated_at = now(),
    lease_expires_at = NULL
FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[]) AS u (id, attempt, state, reason)
WHERE j.id = u.id AND j.attempt = u.attempt AND j.state IN ('queued', 'running')
RETURNING j.id, j.batch_id
