SELECT state, attempt, batch_id FROM jobs WHERE id = $1
