SELECT id, request_hash FROM batches WHERE tenant = $1 AND idempotency_key = $2
