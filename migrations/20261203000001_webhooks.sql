-- Webhooks: a batch may name a URL that is told when its jobs finish
-- (`job.finished`) and when the batch does (`batch.finished`).
--
-- Deliveries are an outbox: the trigger below stores them in the
-- transaction that finishes the job, so a transition that commits has its
-- deliveries and one that rolls back has none. The dispatcher's sender
-- claims due deliveries for a while (a lease, as prune_objects), posts
-- them signed with the batch's secret, and records each attempt; a failed
-- attempt is tried again later, with exponential backoff, until the
-- delivery is older than KILN_WEBHOOK_RETRY_FOR. Deliveries go with their
-- batch.
ALTER TABLE batches
    ADD COLUMN webhook_url    text,
    ADD COLUMN webhook_secret text,
    ADD COLUMN webhook_events text[];

CREATE TABLE webhook_deliveries (
    id              bigserial PRIMARY KEY,
    batch_id        uuid NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    event           text NOT NULL CHECK (event IN ('job.finished', 'batch.finished')),
    job_id          uuid,
    -- The JSON body, fixed when the delivery is stored: every attempt
    -- sends the same bytes.
    body            text NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    -- The receiver's HTTP status of the last attempt (none when it did not
    -- answer), and what went wrong.
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    next_at         timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    claimed_until   timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_batch ON webhook_deliveries (batch_id, id);

-- After the counts trigger (triggers on one event fire in name order):
-- `job.finished` for each job of a webhook batch that entered a terminal
-- state, and `batch.finished` when such a change leaves its batch with
-- nothing queued or running.
--
-- Two transactions that finish a batch's last two jobs each see the
-- other's job running until it commits, so `batch.finished` is decided
-- under a lock per batch (an advisory lock, taken in batch order): the
-- second waits for the first, and its next statement, with a new
-- snapshot, sees the batch finished. So a batch that finishes has exactly
-- one `batch.finished`. Writers that finish jobs of several batches in one
-- transaction take these locks first, in batch order
-- (lock_finishing_batches.sql), so that none waits on another in a cycle.
-- The lock that orders the transactions deciding a batch's
-- `batch.finished`, held until the transaction ends.
CREATE FUNCTION lock_batch_finished(batch uuid) RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtextextended('kiln.batch_finished.' || batch::text, 0))
$$;

CREATE FUNCTION job_webhooks() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    finishing uuid[];
BEGIN
    SELECT array_agg(DISTINCT j.batch_id ORDER BY j.batch_id) INTO finishing
    FROM old_jobs o JOIN new_jobs j ON j.id = o.id JOIN batches b ON b.id = j.batch_id
    WHERE o.state <> j.state AND j.state IN ('succeeded', 'failed', 'cancelled')
      AND b.webhook_url IS NOT NULL;
    IF finishing IS NULL THEN
        RETURN NULL;
    END IF;

    INSERT INTO webhook_deliveries (batch_id, event, job_id, body)
    SELECT j.batch_id, 'job.finished', j.id, jsonb_build_object(
        'type', 'job.finished',
        'created_at', now(),
        'batch_id', j.batch_id,
        'job', jsonb_build_object(
            'id', j.id, 'state', j.state, 'attempt', j.attempt, 'prompt', j.prompt,
            'error', j.error, 'finished_at', j.finished_at,
            'results', coalesce((
                SELECT jsonb_agg(jsonb_build_object('rank', r.rank, 'score', r.score,
                                 'seed', r.seed, 'width', r.width, 'height', r.height,
                                 'key', r.key) ORDER BY r.rank)
                FROM results r WHERE r.job_id = j.id AND j.state = 'succeeded'), '[]'::jsonb)))::text
    FROM old_jobs o JOIN new_jobs j ON j.id = o.id JOIN batches b ON b.id = j.batch_id
    WHERE o.state <> j.state AND j.state IN ('succeeded', 'failed', 'cancelled')
      AND 'job.finished' = ANY (b.webhook_events)
    ORDER BY j.batch_id, j.id;

    SELECT array_agg(b.id ORDER BY b.id) INTO finishing
    FROM batches b
    WHERE b.id = ANY (finishing) AND 'batch.finished' = ANY (b.webhook_events);
    IF finishing IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM lock_batch_finished(f) FROM unnest(finishing) AS f ORDER BY f;

    INSERT INTO webhook_deliveries (batch_id, event, body)
    SELECT b.id, 'batch.finished', jsonb_build_object(
        'type', 'batch.finished',
        'created_at', now(),
        'batch_id', b.id,
        'batch', jsonb_build_object(
            'id', b.id, 'name', b.name, 'total', b.total,
            'counts', jsonb_build_object('succeeded', c.succeeded, 'failed', c.failed,
                                         'cancelled', c.cancelled)))::text
    FROM batches b CROSS JOIN LATERAL batch_job_counts(b.id) c
    WHERE b.id = ANY (finishing) AND c.queued = 0 AND c.running = 0
    ORDER BY b.id;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_webhooks AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION job_webhooks();
