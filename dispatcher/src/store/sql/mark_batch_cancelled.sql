UPDATE batches SET cancelled_at = coalesce(cancelled_at, now()), updated_at = now() WHERE id = $1
