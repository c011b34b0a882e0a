SELECT count(*) FROM jobs WHERE batch_id = $1 AND state IN ('succeeded', 'failed', 'cancelled')
