-- Objects queued for deletion are claimed for a while (a lease) instead of
-- locked for a transaction: a pruner deletes them from the bucket outside
-- any transaction, so that no transaction stays open for as long as the
-- bucket takes (the readers of the job feed wait on the oldest one).
ALTER TABLE prune_objects ADD COLUMN claimed_until timestamptz;
