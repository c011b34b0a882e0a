-- The worker registry: the latest report of each worker (see
-- kiln_protocol::WorkerReport). `reported_at` is the worker's clock and
-- orders its reports; `last_seen` is the dispatcher's, so a worker's clock
-- never decides whether it is shown as lost.
CREATE TABLE workers (
    id            text PRIMARY KEY,
    host          text NOT NULL,
    version       text NOT NULL,
    engines       text[] NOT NULL,
    devices       text[] NOT NULL,
    slots         integer NOT NULL,
    capacity      integer NOT NULL,
    jobs_in_hand  integer NOT NULL,
    phase         text NOT NULL CHECK (phase IN ('ready', 'draining', 'stopped')),
    started_at    timestamptz NOT NULL,
    reported_at   timestamptz NOT NULL,
    interval_ms   bigint NOT NULL,
    last_seen     timestamptz NOT NULL DEFAULT now()
);

-- Operator tokens may also read the worker registry and drain workers.
ALTER TABLE api_tokens ADD COLUMN operator boolean NOT NULL DEFAULT false;
