DELETE FROM outbox o USING jobs j
WHERE o.job_id = j.id AND j.id = $1 AND j.tenant = $2 AND j.state IN ('queued', 'running')
