-- Per-tenant quotas; NULL takes the dispatcher's default
-- (KILN_TENANT_MAX_ACTIVE_JOBS, KILN_TENANT_SUBMITS_PER_MINUTE).
ALTER TABLE tenants
    ADD COLUMN max_active_jobs bigint,
    ADD COLUMN submits_per_minute integer;
-- A tenant's queued and running jobs, counted at each submit.
CREATE INDEX jobs_active_tenant ON jobs (tenant) WHERE state IN ('queued', 'running');
