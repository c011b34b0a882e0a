-- $1 engine index: one relay per engine at a time, until the transaction ends.
SELECT pg_try_advisory_xact_lock(7305810513829494784 + $1)
