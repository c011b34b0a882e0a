-- $1 job ids, $2 upload ids (as parsed from object keys): the state and
-- kept result keys of each job that exists, and each upload that exists
-- (as `{tenant}/{id}`, state 'upload'; its key follows from those).
SELECT j.id::text AS id, j.state,
       coalesce(array_agg(r.key) FILTER (WHERE r.key IS NOT NULL), '{}') AS keys
FROM jobs j LEFT JOIN results r ON r.job_id = j.id
WHERE j.id = ANY($1)
GROUP BY j.id, j.state
UNION ALL
SELECT u.tenant || '/' || u.id, 'upload', '{}'::text[]
FROM uploads u WHERE u.id = ANY($2)
