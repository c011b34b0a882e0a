SELECT engine, state, count(*) FROM jobs GROUP BY engine, state ORDER BY 1, 2
