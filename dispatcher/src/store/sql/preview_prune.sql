-- $1 default retention (seconds): what a pass would delete now, deleting
-- and locking nothing: the expired batches, their jobs, the expired
-- uploads and the objects still queued from an earlier pass.
SELECT coalesce(array_agg(b.id ORDER BY b.created_at, b.id), '{}') AS batches,
       coalesce(sum(b.total), 0)::bigint AS jobs,
       (SELECT count(*) FROM expired_uploads($1::float8)) AS uploads,
       (SELECT count(*) FROM prune_objects) AS queued
FROM expired_batches($1::float8) b
