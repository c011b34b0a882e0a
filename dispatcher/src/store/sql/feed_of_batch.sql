-- $1 batch, $2 tx and $3 id of the last row read, $4 limit: the batch's
-- feed rows after it, of transactions that ended (see the job_feed
-- migration), in order.
SELECT id, tx::text AS tx, job_id, state, attempt, at
FROM job_feed
WHERE batch_id = $1 AND (tx, id) > ($2::text::xid8, $3)
  AND tx < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY tx, id
LIMIT $4
