-- $1 batch, $2 tenant: whether it exists, kept so (FOR KEY SHARE) until
-- the submit that refers to it (retry_of) commits: the pruner skips it
-- meanwhile, and a submit that waited for the pruner finds it gone.
SELECT EXISTS (SELECT 1 FROM batches WHERE id = $1 AND tenant = $2 FOR KEY SHARE)
