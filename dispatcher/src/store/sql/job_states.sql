-- $1 job ids: their state and current attempt.
SELECT id, state, attempt FROM jobs WHERE id = ANY($1)
