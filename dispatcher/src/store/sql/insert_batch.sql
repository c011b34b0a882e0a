INSERT INTO batches
    (id, tenant, name, engine, priority, metadata, retry_of, total, idempotency_key, request_hash,
     webhook_url, webhook_secret, webhook_events)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (tenant, idempotency_key) DO NOTHING
