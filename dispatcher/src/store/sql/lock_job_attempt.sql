SELECT attempt, max_attempts, state FROM jobs WHERE id = $1 FOR UPDATE
