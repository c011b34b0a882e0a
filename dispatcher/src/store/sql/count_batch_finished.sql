SELECT succeeded + failed + cancelled FROM batch_job_counts($1)
