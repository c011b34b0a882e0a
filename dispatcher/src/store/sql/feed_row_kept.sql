-- $1 id, $2 tenant: whether the feed still holds that row of the tenant
-- (a cursor's row that is gone was forgotten for its age, or went with its
-- batch, and rows after it may have gone too).
SELECT EXISTS (SELECT 1 FROM job_feed WHERE id = $1 AND tenant = $2)
