-- Where a new stream starts: rows of transactions that had ended are
-- behind it, those of transactions still running or to come ahead.
SELECT pg_snapshot_xmin(pg_current_snapshot())::text
