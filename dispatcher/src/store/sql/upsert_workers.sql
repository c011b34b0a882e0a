-- $1: a JSON array of worker reports (kiln_protocol::WorkerReport), one per
-- worker at most. A report replaces the one held unless it is an older one
-- of the same process (a lower `seq`: a late redelivery).
INSERT INTO workers (id, host, version, engines, devices, slots, capacity,
                     jobs_in_hand, phase, started_at, seq, interval_ms, last_seen)
SELECT r.worker, r.host, r.version,
       ARRAY(SELECT jsonb_array_elements_text(r.engines)),
       ARRAY(SELECT jsonb_array_elements_text(r.devices)),
       r.slots, r.capacity, r.jobs_in_hand, r.phase, r.started_at, r.seq, r.interval_ms, now()
FROM jsonb_to_recordset($1) AS r(worker text, host text, version text, engines jsonb,
                                 devices jsonb, slots integer, capacity integer,
                                 jobs_in_hand integer, phase text, started_at timestamptz,
                                 seq bigint, interval_ms bigint)
ON CONFLICT (id) DO UPDATE SET
    host = EXCLUDED.host,
    version = EXCLUDED.version,
    engines = EXCLUDED.engines,
    devices = EXCLUDED.devices,
    slots = EXCLUDED.slots,
    capacity = EXCLUDED.capacity,
    jobs_in_hand = EXCLUDED.jobs_in_hand,
    phase = EXCLUDED.phase,
    started_at = EXCLUDED.started_at,
    seq = EXCLUDED.seq,
    interval_ms = EXCLUDED.interval_ms,
    last_seen = EXCLUDED.last_seen
WHERE workers.started_at <> EXCLUDED.started_at OR workers.seq < EXCLUDED.seq
