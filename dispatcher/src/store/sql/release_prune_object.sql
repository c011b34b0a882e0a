-- $1 key: its claim ends (the bucket refused it; the next pass tries again).
UPDATE prune_objects SET claimed_until = NULL WHERE key = $1
