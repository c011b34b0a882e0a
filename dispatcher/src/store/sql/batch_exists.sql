SELECT EXISTS (SELECT 1 FROM batches WHERE id = $1 AND tenant = $2)
