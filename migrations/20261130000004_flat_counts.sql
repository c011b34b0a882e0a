-- Counts whose cost must not grow with the backlog or with history, kept
-- like job_counts (migration 20261130000003): the triggers on jobs append
-- deltas, and the dispatcher folds them every few seconds.
--
-- - broker_counts: jobs per engine the broker holds that no worker has
--   started (queued, and the current attempt published), the relay's
--   window. The relay read it by counting rows up to the window on every
--   transaction, which grew with the backlog.
-- - batch_counts (+ batch_count_deltas): jobs per batch and state, the last
--   state change and the last finish, which a batch's view and the batch
--   list read instead of aggregating every job of each batch.
-- - tenant_active (+ tenant_active_deltas): queued and running jobs per
--   tenant, which the active-jobs quota reads at every submit.
--
-- The batch and tenant deltas fold into a second table keyed by batch or
-- tenant (an upsert per key that moved), so a fold costs what changed
-- since the last one, not the number of batches or tenants ever stored.
--
-- Without the partial index on published jobs, marking a job published
-- changes no indexed column and can be a HOT update; the fill factor
-- leaves room on each page for the updates a job goes through.
LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE broker_counts (
    id     bigserial PRIMARY KEY,
    engine text NOT NULL,
    n      bigint NOT NULL
);
INSERT INTO broker_counts (engine, n)
SELECT engine, count(*) FROM jobs
WHERE state = 'queued' AND published_attempt = attempt GROUP BY engine;

CREATE TABLE batch_counts (
    batch_id      uuid PRIMARY KEY,
    queued        bigint NOT NULL,
    running       bigint NOT NULL,
    succeeded     bigint NOT NULL,
    failed        bigint NOT NULL,
    cancelled     bigint NOT NULL,
    last_change   timestamptz,
    last_finished timestamptz
);
CREATE TABLE batch_count_deltas (
    id            bigserial PRIMARY KEY,
    batch_id      uuid NOT NULL,
    queued        bigint NOT NULL,
    running       bigint NOT NULL,
    succeeded     bigint NOT NULL,
    failed        bigint NOT NULL,
    cancelled     bigint NOT NULL,
    last_change   timestamptz,
    last_finished timestamptz
);
CREATE INDEX batch_count_deltas_batch ON batch_count_deltas (batch_id);
INSERT INTO batch_counts
SELECT batch_id,
       count(*) FILTER (WHERE state = 'queued'),
       count(*) FILTER (WHERE state = 'running'),
       count(*) FILTER (WHERE state = 'succeeded'),
       count(*) FILTER (WHERE state = 'failed'),
       count(*) FILTER (WHERE state = 'cancelled'),
       max(updated_at), max(finished_at)
FROM jobs GROUP BY batch_id;

-- A batch's counts: its folded row and the deltas since, never its jobs.
CREATE FUNCTION batch_job_counts(batch uuid)
RETURNS TABLE (queued bigint, running bigint, succeeded bigint, failed bigint,
               cancelled bigint, last_change timestamptz, last_finished timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(d.queued), 0)::bigint, coalesce(sum(d.running), 0)::bigint,
           coalesce(sum(d.succeeded), 0)::bigint, coalesce(sum(d.failed), 0)::bigint,
           coalesce(sum(d.cancelled), 0)::bigint, max(d.last_change), max(d.last_finished)
    FROM (
        SELECT queued, running, succeeded, failed, cancelled, last_change, last_finished
        FROM batch_counts WHERE batch_id = batch
        UNION ALL
        SELECT queued, running, succeeded, failed, cancelled, last_change, last_finished
        FROM batch_count_deltas WHERE batch_id = batch
    ) d
$$;

CREATE TABLE tenant_active (
    tenant text PRIMARY KEY,
    n      bigint NOT NULL
);
CREATE TABLE tenant_active_deltas (
    id     bigserial PRIMARY KEY,
    tenant text NOT NULL,
    n      bigint NOT NULL
);
CREATE INDEX tenant_active_deltas_tenant ON tenant_active_deltas (tenant);
INSERT INTO tenant_active
SELECT tenant, count(*) FROM jobs WHERE state IN ('queued', 'running') GROUP BY tenant;

-- Inserted jobs are never published yet: no broker delta.
CREATE OR REPLACE FUNCTION job_counts_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (engine, state, n)
    SELECT engine, state, count(*) FROM new_jobs GROUP BY engine, state;
    INSERT INTO batch_count_deltas
        (batch_id, queued, running, succeeded, failed, cancelled, last_change, last_finished)
    SELECT batch_id,
           count(*) FILTER (WHERE state = 'queued'),
           count(*) FILTER (WHERE state = 'running'),
           count(*) FILTER (WHERE state = 'succeeded'),
           count(*) FILTER (WHERE state = 'failed'),
           count(*) FILTER (WHERE state = 'cancelled'),
           max(updated_at), max(finished_at)
    FROM new_jobs GROUP BY batch_id;
    INSERT INTO tenant_active_deltas (tenant, n)
    SELECT tenant, count(*) FROM new_jobs
    WHERE state IN ('queued', 'running') GROUP BY tenant;
    RETURN NULL;
END $$;

-- Only rows whose state changed move the state counts, and only rows that
-- entered or left the broker move its count; other updates (heartbeats,
-- progress) write nothing.
CREATE OR REPLACE FUNCTION job_counts_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH moved AS (
        SELECT o.engine, o.batch_id, o.tenant, o.state AS was, j.state AS became,
               j.updated_at, j.finished_at,
               coalesce(o.state = 'queued' AND o.published_attempt = o.attempt, false) AS was_in,
               coalesce(j.state = 'queued' AND j.published_attempt = j.attempt, false) AS now_in
        FROM old_jobs o JOIN new_jobs j ON j.id = o.id
    ), states AS (
        SELECT * FROM moved WHERE was <> became
    ), by_state AS (
        INSERT INTO job_counts (engine, state, n)
        SELECT engine, state, sum(d) FROM (
            SELECT engine, was AS state, -1 AS d FROM states
            UNION ALL
            SELECT engine, became AS state, 1 AS d FROM states
        ) m GROUP BY engine, state
    ), by_batch AS (
        INSERT INTO batch_count_deltas
            (batch_id, queued, running, succeeded, failed, cancelled, last_change, last_finished)
        SELECT batch_id,
               sum((became = 'queued')::int - (was = 'queued')::int),
               sum((became = 'running')::int - (was = 'running')::int),
               sum((became = 'succeeded')::int - (was = 'succeeded')::int),
               sum((became = 'failed')::int - (was = 'failed')::int),
               sum((became = 'cancelled')::int - (was = 'cancelled')::int),
               max(updated_at), max(finished_at)
        FROM states GROUP BY batch_id
    ), by_tenant AS (
        INSERT INTO tenant_active_deltas (tenant, n)
        SELECT tenant, d FROM (
            SELECT tenant, sum((became IN ('queued', 'running'))::int
                             - (was IN ('queued', 'running'))::int) AS d
            FROM states GROUP BY tenant
        ) t WHERE d <> 0
    )
    INSERT INTO broker_counts (engine, n)
    SELECT engine, sum(now_in::int - was_in::int) FROM moved
    WHERE now_in <> was_in GROUP BY engine;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION job_counts_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (engine, state, n)
    SELECT engine, state, -count(*) FROM old_jobs GROUP BY engine, state;
    INSERT INTO batch_count_deltas
        (batch_id, queued, running, succeeded, failed, cancelled, last_change, last_finished)
    SELECT batch_id,
           -count(*) FILTER (WHERE state = 'queued'),
           -count(*) FILTER (WHERE state = 'running'),
           -count(*) FILTER (WHERE state = 'succeeded'),
           -count(*) FILTER (WHERE state = 'failed'),
           -count(*) FILTER (WHERE state = 'cancelled'),
           NULL, NULL
    FROM old_jobs GROUP BY batch_id;
    INSERT INTO tenant_active_deltas (tenant, n)
    SELECT tenant, -count(*) FROM old_jobs
    WHERE state IN ('queued', 'running') GROUP BY tenant;
    INSERT INTO broker_counts (engine, n)
    SELECT engine, -count(*) FROM old_jobs
    WHERE state = 'queued' AND published_attempt = attempt GROUP BY engine;
    RETURN NULL;
END $$;

-- The counts above replace what these indexes served (the relay's window
-- and the active-jobs quota); the rescuer finds its rare suspects through
-- jobs_active_engine.
DROP INDEX jobs_in_broker;
DROP INDEX jobs_active_tenant;
ALTER TABLE jobs SET (fillfactor = 85);
