-- Reading a job's outcome for App.result: the result or the error, and their ciphertext when the
-- job is encrypted (the application holds the keys and opens them).

-- name: get_outcome
-- jsonb as text, decoded by pgqueue: the caller's connection may load jsonb its own way (Django
-- registers a loader that leaves it as a string).
SELECT id, task, state, result::text AS result, result_encrypted, last_error::text AS last_error, error_encrypted
FROM pgqueue.jobs WHERE id = %(id)s;
