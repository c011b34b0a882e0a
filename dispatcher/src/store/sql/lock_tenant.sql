-- $1 tenant: one submit per tenant at a time checks and uses its quota.
SELECT pg_advisory_xact_lock(hashtextextended('kiln-tenant:' || $1, 0))
