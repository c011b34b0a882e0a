-- The deltas the outbox's triggers append (migration 20261130000003).
SELECT coalesce(sum(n), 0)::bigint FROM outbox_counts
