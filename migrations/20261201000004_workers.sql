-- The worker registry: the latest report of each worker (see
-- kiln_protocol::WorkerReport). A process's reports are ordered by `seq`
-- (a report of another process, a new `started_at`, always replaces);
-- `last_seen` is the dispatcher's clock, so no worker's clock decides
-- whether it is shown as lost.
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
    seq           bigint NOT NULL,
    interval_ms   bigint NOT NULL,
    last_seen     timestamptz NOT NULL DEFAULT now()
);

-- Operator tokens may also read the worker registry and drain workers.
ALTER TABLE api_tokens ADD COLUMN operator boolean NOT NULL DEFAULT false;
