SELECT id FROM uploads WHERE tenant = $1 AND id = ANY($2)
