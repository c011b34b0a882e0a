-- $1 engine, $2 priority ranks (highest first), $3 for each rank the last
-- outbox id already taken from it (keyset paging: each rank's scan starts
-- past the rows deleted before it, a range on outbox_order), $4 limit.
-- No row locks: the caller holds the engine's advisory lock, and a cancel
-- deleting these rows must not wait for the broker.
SELECT o.id, o.job_id, o.attempt, o.priority, j.batch_id, j.tenant, j.prompt, j.params,
       j.state, j.attempt AS job_attempt
FROM unnest($2::smallint[], $3::bigint[]) AS c (priority, after)
CROSS JOIN LATERAL (
    SELECT * FROM outbox o
    WHERE o.engine = $1 AND o.priority = c.priority AND o.id > c.after
      AND o.not_before <= now()
    ORDER BY o.id
    LIMIT $4
) o
JOIN jobs j ON j.id = o.job_id
ORDER BY o.priority DESC, o.id
LIMIT $4
