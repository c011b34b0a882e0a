INSERT INTO api_tokens (id, tenant, token_hash, operator) VALUES ($1, $2, $3, $4)
