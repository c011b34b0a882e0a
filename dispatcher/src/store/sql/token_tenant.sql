SELECT tenant, operator FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL
