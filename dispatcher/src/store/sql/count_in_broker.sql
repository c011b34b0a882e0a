-- $1 engine: jobs published and not started, from the deltas the triggers
-- keep (migration 20261130000004), folded every few seconds.
SELECT coalesce(sum(n), 0)::bigint FROM broker_counts WHERE engine = $1
