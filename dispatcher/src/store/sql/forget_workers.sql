-- Workers not heard from for $1 seconds leave the registry.
DELETE FROM workers WHERE last_seen < now() - make_interval(secs => $1)
