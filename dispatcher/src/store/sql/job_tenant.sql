SELECT tenant FROM jobs WHERE id = $1
