-- $1 job ids: locks them in id order, so that two sets of worker events
-- (or a set and another writer) never wait on each other in a cycle.
SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE
