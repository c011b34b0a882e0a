-- $1 key: its objects are gone from the bucket.
DELETE FROM prune_objects WHERE key = $1
