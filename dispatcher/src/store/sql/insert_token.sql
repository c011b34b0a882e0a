INSERT INTO api_tokens (id, tenant, token_hash) VALUES ($1, $2, $3)
