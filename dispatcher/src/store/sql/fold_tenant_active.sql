-- As fold_batch_counts.sql, for the active jobs per tenant.
WITH gone AS (DELETE FROM tenant_active_deltas RETURNING tenant, n)
INSERT INTO tenant_active AS t (tenant, n)
SELECT tenant, sum(n) FROM gone GROUP BY tenant
ON CONFLICT (tenant) DO UPDATE SET n = t.n + excluded.n
