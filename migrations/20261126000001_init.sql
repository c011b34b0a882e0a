-- Kiln's control-plane schema: tenants and their API tokens, batches, jobs,
-- the transactional outbox the relay publishes from, results and uploads.

CREATE TABLE tenants (
    name        text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    id          uuid PRIMARY KEY,
    tenant      text NOT NULL REFERENCES tenants (name),
    -- SHA-256 of the token; the token itself is never stored.
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE batches (
    id               uuid PRIMARY KEY,
    tenant           text NOT NULL REFERENCES tenants (name),
    name             text,
    engine           text NOT NULL,
    priority         smallint NOT NULL,
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
    retry_of         uuid REFERENCES batches (id),
    total            integer NOT NULL,
    idempotency_key  text,
    request_hash     bytea,
    cancelled_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, idempotency_key)
);
CREATE INDEX batches_tenant_id ON batches (tenant, id DESC);

CREATE TABLE jobs (
    id                uuid PRIMARY KEY,
    batch_id          uuid NOT NULL REFERENCES batches (id),
    tenant            text NOT NULL,
    -- Position of the job in its batch (0-based), the order of listing.
    seq               integer NOT NULL,
    engine            text NOT NULL,
    priority          smallint NOT NULL,
    prompt            text NOT NULL,
    -- Resolved parameters (defaults and seed filled in).
    params            jsonb NOT NULL,
    state             text NOT NULL DEFAULT 'queued'
                      CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempt           integer NOT NULL DEFAULT 1,
    max_attempts      integer NOT NULL,
    -- The attempt whose message the broker confirmed, if any.
    published_attempt integer,
    progress_step     integer,
    progress_total    integer,
    error             text,
    worker            text,
    lease_expires_at  timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (batch_id, seq)
);
CREATE INDEX jobs_batch_state ON jobs (batch_id, state);
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE state = 'running';
-- Jobs in the broker that no worker has started: the relay's window.
CREATE INDEX jobs_in_broker ON jobs (engine)
    WHERE state = 'queued' AND published_attempt = attempt;
CREATE INDEX jobs_active_engine ON jobs (engine, state)
    WHERE state IN ('queued', 'running');

-- One row per job attempt waiting to be published. Written in the same
-- transaction as the job (or its retry); deleted once the broker confirmed.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    job_id      uuid NOT NULL REFERENCES jobs (id),
    attempt     integer NOT NULL,
    engine      text NOT NULL,
    priority    smallint NOT NULL,
    not_before  timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_order ON outbox (engine, priority DESC, id);
CREATE INDEX outbox_job ON outbox (job_id);

CREATE TABLE results (
    job_id  uuid NOT NULL REFERENCES jobs (id),
    rank    integer NOT NULL,
    score   real,
    seed    bigint NOT NULL,
    width   integer NOT NULL,
    height  integer NOT NULL,
    key     text NOT NULL,
    PRIMARY KEY (job_id, rank)
);

CREATE TABLE uploads (
    id          text PRIMARY KEY,
    tenant      text NOT NULL REFERENCES tenants (name),
    key         text NOT NULL,
    width       integer NOT NULL,
    height      integer NOT NULL,
    format      text NOT NULL,
    bytes       bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX uploads_tenant ON uploads (tenant, id);
