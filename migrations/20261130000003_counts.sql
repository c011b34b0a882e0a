-- Jobs per engine and state, and outbox rows per engine, kept by
-- statement-level triggers as rows are written, so that /metrics sums a
-- few rows instead of counting every job ever stored (or the whole
-- outbox) at each scrape.
--
-- The triggers only append deltas (no row is updated, so concurrent
-- writers never wait on each other or deadlock here); the dispatcher
-- folds the deltas into one row per key every few seconds.
--
-- No writes between the first counts and the triggers (replicas still on
-- the previous version keep writing during a rolling deploy).
LOCK TABLE jobs, outbox IN SHARE ROW EXCLUSIVE MODE;
CREATE TABLE job_counts (
    id     bigserial PRIMARY KEY,
    engine text NOT NULL,
    state  text NOT NULL,
    n      bigint NOT NULL
);
INSERT INTO job_counts (engine, state, n)
SELECT engine, state, count(*) FROM jobs GROUP BY engine, state;

CREATE FUNCTION job_counts_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (engine, state, n)
    SELECT engine, state, count(*) FROM new_jobs GROUP BY engine, state;
    RETURN NULL;
END $$;

-- Only rows whose state changed move a count; other updates (heartbeats,
-- publishes) write nothing here.
CREATE FUNCTION job_counts_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (engine, state, n)
    SELECT engine, state, sum(d) FROM (
        SELECT o.engine, o.state, -1 AS d
        FROM old_jobs o JOIN new_jobs j ON j.id = o.id WHERE o.state <> j.state
        UNION ALL
        SELECT j.engine, j.state, 1 AS d
        FROM old_jobs o JOIN new_jobs j ON j.id = o.id WHERE o.state <> j.state
    ) moved GROUP BY engine, state;
    RETURN NULL;
END $$;

CREATE FUNCTION job_counts_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (engine, state, n)
    SELECT engine, state, -count(*) FROM old_jobs GROUP BY engine, state;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_insert();
CREATE TRIGGER jobs_count_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_update();
CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_delete();

CREATE TABLE outbox_counts (
    id     bigserial PRIMARY KEY,
    engine text NOT NULL,
    n      bigint NOT NULL
);
INSERT INTO outbox_counts (engine, n) SELECT engine, count(*) FROM outbox GROUP BY engine;

CREATE FUNCTION outbox_counts_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_counts (engine, n)
    SELECT engine, count(*) FROM new_rows GROUP BY engine;
    RETURN NULL;
END $$;

CREATE FUNCTION outbox_counts_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_counts (engine, n)
    SELECT engine, -count(*) FROM old_rows GROUP BY engine;
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_count_insert AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_counts_insert();
CREATE TRIGGER outbox_count_delete AFTER DELETE ON outbox
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_counts_delete();
