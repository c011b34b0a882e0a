-- $1 a tenant name ('' for before the first): the next tenant by name.
SELECT name FROM tenants WHERE name > $1 ORDER BY name LIMIT 1
