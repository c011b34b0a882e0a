-- The job feed: one row per change of a job's state, appended by the
-- statement trigger on jobs in the transaction that made the change, and
-- read by the event streams (GET /v1/batches/{id}/events, GET /v1/events).
--
-- A reader takes rows in (tx, id) order, and only rows of transactions
-- older than every transaction still running (tx below the xmin of its
-- snapshot). Every transaction that can still append has a tx at or above
-- that xmin, so a row that commits late is never behind what a reader has
-- passed: resuming after the last (tx, id) seen misses nothing and repeats
-- nothing, from any replica, across restarts. Rows go with their batch, and
-- after KILN_FEED_KEEP.
CREATE TABLE job_feed (
    id       bigserial PRIMARY KEY,
    tx       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    tenant   text NOT NULL,
    batch_id uuid NOT NULL,
    job_id   uuid NOT NULL,
    state    text NOT NULL,
    attempt  integer NOT NULL,
    at       timestamptz NOT NULL
);
CREATE INDEX job_feed_batch ON job_feed (batch_id, tx, id);
CREATE INDEX job_feed_tenant ON job_feed (tenant, tx, id);
CREATE INDEX job_feed_at ON job_feed (at);

-- As in 20261130000004_flat_counts, with the feed appended from the rows
-- whose state changed.
CREATE OR REPLACE FUNCTION job_counts_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH moved AS (
        SELECT j.id, j.attempt, o.engine, o.batch_id, o.tenant, o.state AS was, j.state AS became,
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
    ), feed AS (
        INSERT INTO job_feed (tenant, batch_id, job_id, state, attempt, at)
        SELECT tenant, batch_id, id, became, attempt, updated_at FROM states
        ORDER BY batch_id, id
    )
    INSERT INTO broker_counts (engine, n)
    SELECT engine, sum(now_in::int - was_in::int) FROM moved
    WHERE now_in <> was_in GROUP BY engine;
    RETURN NULL;
END $$;
