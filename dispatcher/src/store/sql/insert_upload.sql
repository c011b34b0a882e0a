INSERT INTO uploads (id, tenant, key, width, height, format, bytes)
VALUES ($1, $2, $3, $4, $5, $6, $7)
