DELETE FROM outbox o USING jobs j WHERE o.job_id = j.id AND j.batch_id = $1
