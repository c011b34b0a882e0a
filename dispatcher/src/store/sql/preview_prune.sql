-- $1 default retention (seconds): what a pass would delete now, deleting
-- and locking nothing: the expired batches, their jobs, the expired
-- uploads and the objects still queued from an earlier pass.
SELECT coalesce((SELECT array_agg(id ORDER BY created_at, id) FROM expired_batches($1::float8)), '{}') AS batches,
       coalesce((SELECT sum(total) FROM expired_batches($1::float8)), 0)::bigint AS jobs,
       (SELECT count(*) FROM expired_uploads($1::float8)) AS uploads,
       (SELECT count(*) FROM prune_objects) AS queued
