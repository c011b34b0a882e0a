-- $1 batch ids about to be deleted: retries of them lose their link.
UPDATE batches SET retry_of = NULL WHERE retry_of = ANY($1) AND NOT id = ANY($1)
