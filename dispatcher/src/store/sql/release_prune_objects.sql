-- $1 keys: their claims end (the bucket refused them, or the pass stopped
-- before them; the next pass tries again).
UPDATE prune_objects SET claimed_until = NULL WHERE key = ANY($1)
